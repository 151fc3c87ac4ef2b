"""One persistent Pallas GPU kernel for a whole batch-1 decode step (FlashFormer-style).

Design. A single `pallas_call` whose grid is at most the SM count (every block resident at once)
runs the whole step: embedding row, then per layer five phases, then the LM head:
  qkv   x -> RMSNorm -> [q; k; v] = Wqkv x        (GEMV split over output rows)
  attn  RoPE, KV-cache append, split-K GQA attention over the cache; the last split of a kv
        group to finish (a per-group atomic counter) merges the partial softmaxes
  o     x += Wo attn
  gu    h = silu(Wgate n(x)) * Wup n(x)
  down  x += Wdown h
Each block takes items (row tiles, or (kv group, split) pairs) round-robin, streams its weight
rows from HBM and keeps every activation vector in a small global scratch buffer. Phases are
ordered by a grid-wide barrier on a global-memory counter (`atomic_add` with acquire/release at
GPU scope, then a spin on it), as FlashFormer orders layers; the atomic counter and the
co-residency of all blocks are what make the spin safe, hence grid <= #SMs.

With `Tiling.prefetch` > 0 a block requests its next item's first weight chunks before each
barrier and while the previous item computes (FlashFormer overlaps the next layer's weight loads
the same way); the default is 0: prefetching was slower at every shape timed
(benchmarks/RESULTS.md#lab-log, "Launch configurations tuned", fused decode tilings).

Backend. This is the Pallas *Triton* lowering (`pl.pallas_call` + `pltriton`), not Mosaic GPU
as the issue asks: Mosaic GPU's interpreter does not model global semaphores or atomics (no CPU
test of the barrier logic), and its register layouts make a batch-1 GEMV much more work; the
Triton lowering gives grid-wide atomics, an interpret mode (one block, where each barrier is
already met) and a GEMV in a few lines. The Triton backend is deprecated in jax 0.11 (it warns).
There is no hand-built shared-memory ring: Triton schedules each tile's loads itself.
The Mosaic GPU port (kernel_mgpu.py) is `fused_decode_step`'s default wherever it serves the model
on Hopper, being the faster; this kernel beats the plain jitted step at the 138M and 1.24B shapes
and loses to it at 8B (benchmarks/RESULTS.md#fused-decode). What bounds it: the grid barriers (81 a
step at 1.24B, 61 at 138M), each a few microseconds even alone, which is most of a small model's
step (the lab log's fused-decode entries: benchmarks/RESULTS.md#lab-log).

Numerics (weights.py): every vector entering a matrix product is rounded to the activation dtype,
products and sums are float32, the residual stream is float32: the same function as
`decode_step_reference`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.fused_decode.weights import FusedWeights

f32 = jnp.float32
_PHASES = 5  # barriers per layer
_SPIN_LIMIT = 1 << 20  # polls of a grid barrier before giving up (about a second on a GPU)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Static work split. rows: output rows per GEMV item; chunk: input columns per load;
  seq_block: cache positions per attention load; splits: attention splits per kv group;
  prefetch: weight elements per GEMV item requested ahead (before a barrier, or while the
  previous item computes; 0 = none)."""
  num_blocks: int
  rows: int = 16
  chunk: int = 512
  seq_block: int = 32
  splits: int = 16
  num_warps: int = 8
  prefetch: int = 0


def pow2_divisor(n: int, cap: int) -> int:
  """Largest power of two <= cap dividing n."""
  d = 1
  while d * 2 <= cap and n % (d * 2) == 0:
    d *= 2
  return d


def default_tiling(config, num_blocks: int, max_len: int) -> Tiling:
  """The fastest measured split (rows 16, 8 warps), fitted to the model: about one attention
  item per block, cache blocks of 2048 elements per head."""
  c = config
  splits = pow2_divisor(1 << 30, max(1, min(32, num_blocks // c.num_kv_heads)))
  seq_block = pow2_divisor(max_len, max(1, 2048 // c.head_dim))
  rows = pow2_divisor(math.gcd(c.head_dim, c.d_model, c.mlp_dim, c.vocab_size), 16)
  return Tiling(num_blocks=num_blocks, rows=rows, seq_block=seq_block, splits=splits)


def _check(config, tiling: Tiling, max_len: int):
  c, t = config, tiling
  R = c.num_heads // c.num_kv_heads
  pow2 = lambda n: n > 0 and n & (n - 1) == 0
  checks = [("rows", t.rows, pow2(t.rows) and c.head_dim % t.rows == 0 and c.d_model % t.rows == 0
             and c.mlp_dim % t.rows == 0 and c.vocab_size % t.rows == 0,
             "a power of two dividing head_dim, d_model, mlp_dim and vocab_size"),
            ("seq_block", t.seq_block, pow2(t.seq_block) and max_len % t.seq_block == 0,
             f"a power of two dividing the cache length {max_len}"),
            ("splits", t.splits, pow2(t.splits), "a power of two"),
            ("num_heads/num_kv_heads", R, pow2(R), "a power of two"),
            ("head_dim", c.head_dim, pow2(c.head_dim) and c.head_dim >= 4,
             "a power of two >= 4")]
  for name, value, ok, expected in checks:
    if not ok:
      raise ValueError(f"fused decode: {name}={value}; expected {expected}")


def _ld(ref):
  """Load of a buffer written earlier in this launch by another block: volatile, so it is read
  from L2 and never from a stale L1 line (jax 0.11.2's '.cg' cache modifier does not lower)."""
  return pltriton.load(ref, volatile=True).astype(f32)


def _i32(v):
  """An int32 array scalar (the interpreter's atomics index and add arrays, not Python ints)."""
  return jnp.full((), v, jnp.int32)


def _block_sync(interpret: bool):
  """__syncthreads (the interpreter runs one thread per block and has no lowering for it)."""
  if not interpret:
    pltriton.debug_barrier()


def _grid_barrier(sync_ref, target, interpret: bool):
  """Wait until all blocks arrived: counter sync_ref[0] is monotone, target = blocks x index.

  Arrive and poll with acquire/release atomics (a scalar atomic is issued by one thread of the
  block). Polling with volatile loads instead, which every thread issues, was slower when
  timed (together with other changes)."""
  _block_sync(interpret)
  zero = _i32(0)
  # After one time-out every later barrier gives up at once (no minutes-long hang).
  healthy = pltriton.load(sync_ref.at[_i32(1)], volatile=True) == 0
  limit = healthy.astype(jnp.int32) * _SPIN_LIMIT
  seen = pltriton.atomic_add(sync_ref, (zero,), _i32(1)) + 1

  def spin(carry):
    _, n = carry
    return pltriton.atomic_add(sync_ref, (zero,), zero), n + 1

  seen, _ = lax.while_loop(lambda c: (c[0] < target) & (c[1] < limit), spin, (seen, 0))
  # A barrier that never completes (blocks not co-resident) must not hang the GPU: give up,
  # count it in sync_ref[1], and the caller poisons the logits.
  @pl.when(seen < target)
  def _():
    pltriton.atomic_add(sync_ref, (_i32(1),), _i32(1))
  _block_sync(interpret)


def _masked_load(ref, ok):
  """ref's block where the scalar `ok` holds; no memory is read when it does not."""
  return pltriton.load(ref, mask=jnp.broadcast_to(ok, ref.shape))


def _phase(n_items: int, num_blocks: int, pid, load, compute, wait):
  """compute(item, load(item), ctx) for this block's items pid, pid + num_blocks, ... < n_items.

  Software-pipelined across items and across the grid barrier: the first item's weights are
  requested before `wait()` (the barrier; it returns ctx, e.g. an RMS factor) and item j+1's
  while item j computes. Weights do not depend on activations, so this is always safe."""
  trips = -(-n_items // num_blocks)
  fetch = lambda item: load(jnp.minimum(item, n_items - 1), item < n_items)
  first = fetch(pid)
  ctx = wait()

  def body(j, data):
    item = pid + j * num_blocks
    nxt = fetch(item + num_blocks) if trips > 1 else data
    pl.when(item < n_items)(lambda: compute(item, data, ctx))
    return nxt

  if trips == 1:
    body(0, first)
  else:
    lax.fori_loop(0, trips, body, first)


@dataclasses.dataclass(frozen=True)
class _Mat:
  """A matrix streamed by a GEMV phase: view(n0, r, i) is chunk i of rows n0..n0+r (a ref view
  of shape [r, ...]); chunk_elems the elements of one row's chunk; scale(n0, r) the rows'
  scales or None."""
  view: object
  n_chunks: int
  chunk_elems: int
  scale: object = None


def _phase_rows(t: Tiling, n_out: int) -> int:
  """t.rows, halved (down to 8) while that leaves over half the blocks without a tile: small
  outputs are spread over most SMs rather than streamed by a few."""
  rows = t.rows
  while rows > 8 and 2 * (n_out // rows) < t.num_blocks:
    rows //= 2
  return rows


def _gemv_phase(t: Tiling, pid, n_out: int, mats, x_chunk, finish, wait):
  """finish(n0, rows, [W_m[n0:n0+rows] @ x for each m], ctx) over row tiles; x_chunk(i, ctx) is
  the input's chunk i in float32 (already rounded to the activation dtype)."""
  rows = _phase_rows(t, n_out)
  n_pre = [min(m.n_chunks, t.prefetch // (len(mats) * rows * m.chunk_elems))
           for m in mats]

  def load(item, ok):
    n0 = item * rows
    return tuple(tuple(_masked_load(m.view(n0, rows, i), ok) for i in range(n)) for m, n in
                 zip(mats, n_pre))

  def compute(item, pre, ctx):
    n0 = item * rows
    xs = {}
    ys = []
    for m, p in zip(mats, pre):
      acc = None
      for i in range(m.n_chunks):
        if i not in xs:
          xs[i] = x_chunk(i, ctx)
        wi = p[i] if i < len(p) else m.view(n0, rows, i)[...]
        prod = wi.astype(f32) * xs[i][None]
        while prod.ndim > 1:
          prod = jnp.sum(prod, axis=-1)
        acc = prod if acc is None else acc + prod
      ys.append(acc if m.scale is None else acc * m.scale(n0, rows))
    finish(n0, rows, ys, ctx)

  _phase(n_out // rows, t.num_blocks, pid, load, compute, wait)


def _rstd(x_ref, D: int, chunk: int, eps: float):
  ss = 0.0
  for i in range(D // chunk):
    x = _ld(x_ref.at[pl.ds(i * chunk, chunk)])
    ss = ss + jnp.sum(x * x)
  return lax.rsqrt(ss / D + eps)


def _kernel(c, t: Tiling, interpret: bool, treedef, n_in: int, *refs):
  ins = jax.tree.unflatten(treedef, refs[:n_in])
  (logits_ref, k_ref, v_ref, sync_ref, x_ref, qkv_ref, attn_ref, h_ref, po_ref, pm_ref,
   pls_ref) = refs[n_in:]
  w = ins["w"]
  L, D, H, G, K, F, V = (c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim,
                         c.mlp_dim, c.vocab_size)
  R, K2, NS, bs, nb = H // G, K // 2, t.splits, t.seq_block, t.num_blocks
  act, cdt = c.act_dtype, c.cache_dtype
  cD = pow2_divisor(D, t.chunk)
  cF = pow2_divisor(F, t.chunk)
  hb = pow2_divisor(H, max(1, t.chunk // K))
  token = ins["token"][0]
  pos = ins["pos"][0]
  scale = K**-0.5
  pid = pl.program_id(0)
  rnd = lambda x: x.astype(act).astype(f32)
  barrier = lambda k: _grid_barrier(sync_ref, nb * k, interpret)

  def normed(norm_chunk):
    """x's chunk i, RMS-normalised with ctx = 1/rms and scaled, in the activation dtype."""
    return lambda i, rstd: rnd(_ld(x_ref.at[pl.ds(i * cD, cD)]) * rstd * norm_chunk(i))

  def rows_of(ref, l, chunk, n_chunks):
    view = lambda n0, r, i: ref.at[l, pl.ds(n0, r), pl.ds(i * chunk, chunk)]
    return view, n_chunks, chunk

  def scale_of(ref, l):
    return None if ref is None else (lambda n0, r: ref[l, pl.ds(n0, r)])

  def residual_add(n0, r, ys, ctx):
    x_ref[pl.ds(n0, r)] = _ld(x_ref.at[pl.ds(n0, r)]) + ys[0]

  # Embedding row -> residual stream.
  @pl.when(pid == 0)
  def _():
    for i in range(D // cD):
      e = w.embed[token, pl.ds(i * cD, cD)].astype(f32)
      if w.sembed is not None:
        e = e * w.sembed[token]
      x_ref[pl.ds(i * cD, cD)] = e

  def layer(l, carry):
    first_barrier = 1 + _PHASES * l

    def wait_normed(j, norm_ref):
      def wait():
        barrier(first_barrier + j)
        return _rstd(x_ref, D, cD, c.norm_eps)
      return wait, normed(lambda i: norm_ref[l, pl.ds(i * cD, cD)])

    # qkv: rows of [q heads; k groups; v groups] into qkv_ref [H + 2G, K].
    wait, xq = wait_normed(0, w.attn_norm)

    def qkv_store(n0, r, ys, ctx):
      qkv_ref[n0 // K, pl.ds(n0 % K, r)] = ys[0]
    _gemv_phase(t, pid, c.qkv_rows, [_Mat(*rows_of(w.wqkv, l, cD, D // cD),
                                          scale_of(w.sqkv, l))], xq, qkv_store, wait)

    # attn: item = (kv group g, split s); split s reads cache blocks s, s + NS, ... below pos.
    def attn_item(item, data, ctx):
      g, s = item // NS, item % NS
      ang = pos.astype(f32) * ins["inv_freq"][...]
      cs, sn = jnp.cos(ang), jnp.sin(ang)
      q1 = _ld(qkv_ref.at[pl.ds(g * R, R), pl.ds(0, K2)])
      q2 = _ld(qkv_ref.at[pl.ds(g * R, R), pl.ds(K2, K2)])
      q1, q2 = q1 * cs - q2 * sn, q2 * cs + q1 * sn
      k1 = _ld(qkv_ref.at[H + g, pl.ds(0, K2)])
      k2 = _ld(qkv_ref.at[H + g, pl.ds(K2, K2)])
      k1, k2 = (k1 * cs - k2 * sn).astype(cdt), (k2 * cs + k1 * sn).astype(cdt)
      vn = _ld(qkv_ref.at[H + G + g, :]).astype(cdt)

      @pl.when(s == 0)
      def _():
        k_ref[l, pos, g, pl.ds(0, K2)] = k1
        k_ref[l, pos, g, pl.ds(K2, K2)] = k2
        v_ref[l, pos, g, :] = vn

      k1, k2, vn = k1.astype(f32), k2.astype(f32), vn.astype(f32)
      lnew = (jnp.sum(q1 * k1[None], axis=1) + jnp.sum(q2 * k2[None], axis=1)) * scale
      # Split 0 also owns the current token: its running softmax starts from it.
      first = jnp.broadcast_to(s == 0, (R,))
      m = jnp.where(first, lnew, -jnp.inf)
      lsum = jnp.where(first, 1.0, 0.0)
      acc = jnp.where(first[:, None], vn[None], 0.0)

      def block(j, carry):
        m, lsum, acc = carry
        t0 = (s + j * NS) * bs
        kc1 = k_ref[l, pl.ds(t0, bs), g, pl.ds(0, K2)].astype(f32)
        kc2 = k_ref[l, pl.ds(t0, bs), g, pl.ds(K2, K2)].astype(f32)
        vc = v_ref[l, pl.ds(t0, bs), g, :].astype(f32)
        logit = (jnp.sum(q1[:, None, :] * kc1[None], axis=2)
                 + jnp.sum(q2[:, None, :] * kc2[None], axis=2)) * scale
        valid = t0 + lax.broadcasted_iota(jnp.int32, (bs,), 0) < pos
        logit = jnp.where(valid[None, :], logit, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logit, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(logit - m_new[:, None])
        vc = jnp.where(valid[:, None], vc, 0.0)
        acc = acc * alpha[:, None] + jnp.sum(p[:, :, None] * vc[None], axis=1)
        return m_new, lsum * alpha + jnp.sum(p, axis=1), acc

      n_blocks = (pos + bs - 1) // bs
      n_mine = jnp.maximum(n_blocks - s + NS - 1, 0) // NS
      m, lsum, acc = lax.fori_loop(0, n_mine, block, (m, lsum, acc))
      po_ref[g, s] = acc
      pm_ref[g, s] = m
      pls_ref[g, s] = lsum
      _block_sync(interpret)
      done = pltriton.atomic_add(sync_ref, (2 + l * G + g,), _i32(1))

      @pl.when(done == NS - 1)
      def _():
        ms = _ld(pm_ref.at[g])                     # [NS, R]
        mx = jnp.max(ms, axis=0)
        wts = jnp.exp(ms - mx[None])
        total = jnp.sum(wts * _ld(pls_ref.at[g]), axis=0)
        o = jnp.sum(wts[:, :, None] * _ld(po_ref.at[g]), axis=0) / total[:, None]
        attn_ref[pl.ds(g * R, R), :] = rnd(o)
    _phase(G * NS, nb, pid, lambda item, ok: (), attn_item,
           lambda: barrier(first_barrier + 1))

    # o: x += Wo attn (Wo rows split by head: [rows, hb, K] tiles).
    wo = _Mat(lambda n0, r, i: w.wo.at[l, pl.ds(n0, r), pl.ds(i * hb, hb), :], H // hb,
              hb * K, scale_of(w.so, l))
    _gemv_phase(t, pid, D, [wo], lambda i, ctx: _ld(attn_ref.at[pl.ds(i * hb, hb), :]),
                residual_add, lambda: barrier(first_barrier + 2))

    # gu: h = silu(gate) * up.
    wait, xm = wait_normed(3, w.mlp_norm)

    def gu_store(n0, r, ys, ctx):
      gate, up = ys
      h_ref[pl.ds(n0, r)] = gate / (1.0 + jnp.exp(-gate)) * up
    _gemv_phase(t, pid, F, [_Mat(*rows_of(w.wgate, l, cD, D // cD), scale_of(w.sgate, l)),
                            _Mat(*rows_of(w.wup, l, cD, D // cD), scale_of(w.sup, l))],
                xm, gu_store, wait)

    # down: x += Wdown h.
    _gemv_phase(t, pid, D, [_Mat(*rows_of(w.wdown, l, cF, F // cF), scale_of(w.sdown, l))],
                lambda i, ctx: rnd(_ld(h_ref.at[pl.ds(i * cF, cF)])), residual_add,
                lambda: barrier(first_barrier + 4))
    return carry

  lax.fori_loop(0, L, layer, 0)

  # Final norm and LM head.
  def wait_final():
    barrier(1 + _PHASES * L)
    return _rstd(x_ref, D, cD, c.norm_eps)

  def head_store(n0, r, ys, ctx):
    logits_ref[pl.ds(n0, r)] = ys[0]
  head, shead = w.lm_head()
  head_view = lambda n0, r, i: head.at[pl.ds(n0, r), pl.ds(i * cD, cD)]
  head_scale = None if shead is None else (lambda n0, r: shead[pl.ds(n0, r)])
  _gemv_phase(t, pid, V, [_Mat(head_view, D // cD, cD, head_scale)],
              normed(lambda i: w.final_norm[pl.ds(i * cD, cD)]), head_store, wait_final)


@functools.partial(jax.jit, static_argnames=("tiling", "interpret"), donate_argnums=(1,))
def fused_decode_call(weights: FusedWeights, cache, token, position, *, tiling: Tiling,
                      interpret: bool = False):
  """Logits [V] (float32) and the updated cache (donated, written in place)."""
  c = weights.config
  k_cache, v_cache = cache
  S = k_cache.shape[1]
  _check(c, tiling, S)
  G, K, H = c.num_kv_heads, c.head_dim, c.num_heads
  R, NS = H // G, tiling.splits
  ins = {"w": weights, "token": jnp.asarray(token, jnp.int32).reshape(1),
         "pos": jnp.asarray(position, jnp.int32).reshape(1), "inv_freq": c.rope_inv_freq()}
  flat, treedef = jax.tree.flatten(ins)
  # [barrier counter, barrier time-outs, one attention counter per (layer, kv group)]
  sync = jnp.zeros((2 + c.num_layers * G,), jnp.int32)
  sds = jax.ShapeDtypeStruct
  out_shape = [sds((c.vocab_size,), f32), sds(k_cache.shape, k_cache.dtype),
               sds(v_cache.shape, v_cache.dtype), sds(sync.shape, jnp.int32),
               sds((c.d_model,), f32), sds((H + 2 * G, K), f32), sds((H, K), f32),
               sds((c.mlp_dim,), f32), sds((G, NS, R, K), f32), sds((G, NS, R), f32),
               sds((G, NS, R), f32)]
  kernel = functools.partial(_kernel, c, tiling, interpret, treedef, len(flat))
  kernel = _drop_aliased_inputs(kernel, len(flat))
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(tiling.num_blocks,),
      input_output_aliases={len(flat): 1, len(flat) + 1: 2, len(flat) + 2: 3},
      compiler_params=pltriton.CompilerParams(num_warps=tiling.num_warps, num_stages=1),
      interpret=interpret, name="fused_decode",
  )(*flat, k_cache, v_cache, sync)
  logits = jnp.where(outs[3][1] == 0, outs[0], jnp.nan)
  return logits, (outs[1], outs[2])


def _drop_aliased_inputs(kernel, n_flat: int):
  """The body reads and writes the cache and counters through the (aliased) output refs."""
  def body(*refs):
    return kernel(*refs[:n_flat], *refs[n_flat + 3:])
  return body
