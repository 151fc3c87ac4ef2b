"""The fused batch-1 decode step of kernel.py as one persistent Mosaic GPU kernel (`plgpu.kernel`).

Same step and numerics as kernel.py's Triton kernel (weights.py's rule: vectors entering a matrix
product rounded to the activation dtype, float32 products and sums, float32 residual), same
phases per layer (qkv, attn, o, gu, down), items taken round-robin by a grid of at most the SM
count, one warpgroup per block. What differs:
- Weights stream GMEM -> SMEM by TMA, `stages` [rows, chunk] tiles in flight per block, over
  (this block's items, column tiles) of each GEMV phase and on across phases (the ring, below).
  A tile is multiplied in registers (WGMMA
  layout, rows % 64 == 0) and summed over its columns into a float32 [rows] accumulator, as in
  experiments/gemv_mgpu/gemv_mgpu.py (the experiment that showed a TMA pipeline streaming decode
  matrices as fast as XLA's GEMV).
- A phase with fewer row tiles than blocks (the 1.24B model's qkv / o / down: 48 / 32 / 32 tiles
  of 64 rows) is split by columns too (`_splits`: 2 / 4 / 4 at 132 blocks), each item writing a
  float32 partial sum. The readers add them: attention sums the qkv parts; the o and down parts
  are added to the residual by every block when it normalises the residual for the next GEMV
  phase, block 0 storing the sum in the other of two residual buffers (ping-pong, so no block
  reads what is being written in the same phase).
- Each block writes the phase's input vector (RMS-normalised residual, attention output or MLP
  hidden) into its own SMEM from registers, recomputing the norm's rstd from the float32
  residual: no TMA ever reads data written in this launch (no async-proxy fence needed).
- Grid barrier k (`_grid_barrier`): every block adds 1 to one GMEM semaphore (release, GPU
  scope, after a warpgroup barrier) and polls it until k x num_blocks (`pl.semaphore_read`:
  acquire loads), one GMEM round trip after the last arrival; after the last barrier block 0
  takes it back to zero, as `pl.get_global` semaphores must end. Polls are bounded (about a
  second); a block that timed out waits no more and the logits come back NaN (as kernel.py's).
  With num_blocks == 1 (the interpreter, which has no semaphores) barriers are skipped. (A
  first form, block 0 collecting the arrivals and signalling a release, four dependent round
  trips, was slower and was removed: see Measured.)
- Attention: item = (query head, split of its kv group's cache tiles), NS splits per head
  (`_attn_splits`: about one item per block). RoPE without register concatenation: q and k are
  kept as two [K/2] halves; the cache is read as two [seq_block, K/2] column-half tiles, score =
  rowsum(K1 q1) + rowsum(K2 q2). Split 0 of the group's first head appends the rotated key and
  the value to the cache; split 0 of every head scores the current token from registers, so no
  item reads what another writes in this phase. Splits 0..NS-2 store their partial softmax and
  signal a per-(layer, head) GMEM semaphore; split NS-1, a later item of the round-robin order
  (so the wait cannot deadlock), waits for them, takes the semaphore back to zero and merges.
- Weights stream through one SMEM ring for the whole step (`MosaicTiling.ring`, default;
  FlashFormer's weight stream). Weights do not depend on activations, so a block's sequence of
  weight tiles over the step (every GEMV phase of every layer, then the LM head) is static; it
  is walked as one stream, tile number q in slot q % stages, one TMA barrier per slot (two rings
  of `stages` [rows, chunk] slots: the gate/up phase streams two matrices, the other phases use
  the first). Each slot a phase frees is refilled at once with the stream's tile `stages`
  positions on, this phase's or, near its end, the next phase's (the down phase's next is the
  next layer's qkv, or the LM head), so when a block reaches a grid barrier the next phase's
  first tiles are already in flight or in SMEM, also across the attention phase; only the x
  vector waits for the barrier. SMEM at the 1.24B shape (bf16 or int8, stages 4): 210 KB a block
  (the ring, 128 KB, is live for the whole kernel, next to the attention pipeline's 64 KB).
  `ring=False`: a pipeline per phase (`plgpu.emit_pipeline`, filled and drained inside it) with
  an L2 prefetch of the next phase's first tiles before each barrier (146 KB of SMEM).
- int8 tiles are widened to float32 through bfloat16 (`_widen`).

`fused_decode_step` runs it by default wherever it serves the model on a Hopper GPU
(`default_backend`); kernel.py stays available as backend='triton'.

Measured (`python -m benchmarks.bench_decode`; current figures: benchmarks/RESULTS.md#fused-decode;
the ablations and their analysis: benchmarks/RESULTS.md#lab-log, "The SMEM weight ring and the
counter barrier on the GPU"): faster than kernel.py, the plain jitted step and torch.compile at
every model size timed, its logits within the GPU tests' tolerance; the ring and this barrier
each made the step faster, and together the most. What still limits it (hypotheses): the grid
barriers (61 a step at 138M, most of its time; fewer barriers a layer or cheaper ones would
help), and for int8 the per-SM arithmetic of one warpgroup multiplying every weight element in
registers (twice the elements per byte of bf16), so the int8 step is no faster than bf16; two
consumer warpgroups a block or the GEMV on the tensor cores (WGMMA, x as an N = 8 operand) are
the untried fixes.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.fused_decode.kernel import pow2_divisor
from pallas_kernels.fused_decode.weights import FusedWeights

f32 = jnp.float32
_PHASES = 5  # grid barriers per layer
_SPIN_LIMIT = 1 << 20  # polls of a grid barrier before giving up (about a second on a GPU)
_TILE = plgpu.Layout.WGMMA
_ROWS = plgpu.Layout.WGMMA.reduce(1)   # a [rows] vector: one value per tile row
_COLS = plgpu.Layout.WGMMA.reduce(0)   # a [cols] vector broadcast over tile rows


@dataclasses.dataclass(frozen=True)
class MosaicTiling:
  """Static work split. rows: output rows per GEMV item (a multiple of 64, the WGMMA layout's);
  chunk: weight columns per TMA tile; stages: tiles in flight per block; seq_block: cache
  positions per attention tile (a multiple of 64); items: GEMV items a phase with fewer row
  tiles is split into, by columns, at most (0: num_blocks; see `_splits`); prefetch: 1 to
  request each block's first `stages` tiles of the next GEMV phase into L2 before every grid
  barrier, 0 not to (used only without the ring); ring: stream the weights through one SMEM
  ring across phases and grid barriers (see the module docstring; the faster measured), False
  for a pipeline per phase."""
  num_blocks: int
  rows: int = 64
  chunk: int = 128
  stages: int = 4
  seq_block: int = 64
  items: int = 0
  prefetch: int = 1
  ring: bool = True


def default_mosaic_tiling(config, num_blocks: int, max_len: int) -> MosaicTiling:
  """rows 64 (the most items per phase), 256-byte tile rows (chunk 128 in bf16) with 4 tiles in
  flight (two matrices in the gate/up phase: 128 KB of SMEM), cache tiles of up to 8192
  elements per head (128 positions at head_dim 64: a float32 value tile of 64 registers per
  thread)."""
  c = config
  width = 256 // jnp.dtype(c.act_dtype if c.weight_format != "int8" else jnp.int8).itemsize
  n_in = math.gcd(c.d_model, c.num_heads * c.head_dim, c.mlp_dim)
  return MosaicTiling(num_blocks=num_blocks, chunk=pow2_divisor(n_in, width),
                      seq_block=pow2_divisor(max_len, max(64, 8192 // c.head_dim)))


def check_mosaic(config, tiling: MosaicTiling, max_len: int):
  """ValueError naming the first field of the tiling or model the kernel cannot serve."""
  c, t = config, tiling
  n_out = (c.qkv_rows, c.d_model, c.mlp_dim, c.vocab_size)
  n_in = (c.d_model, c.num_heads * c.head_dim, c.mlp_dim)
  checks = [("num_blocks", t.num_blocks, t.num_blocks >= 1, ">= 1"),
            ("rows", t.rows, t.rows % 64 == 0 and all(n % t.rows == 0 for n in n_out),
             f"a multiple of 64 dividing {n_out}"),
            ("chunk", t.chunk, t.chunk % 64 == 0 and all(n % t.chunk == 0 for n in n_in),
             f"a multiple of 64 dividing {n_in}"),
            ("stages", t.stages, t.stages >= 1, ">= 1"),
            ("items", t.items, t.items >= 0, ">= 0"),
            ("prefetch", t.prefetch, t.prefetch in (0, 1), "0 or 1"),
            ("ring", t.ring, t.ring in (False, True), "False or True"),
            ("seq_block", t.seq_block, t.seq_block % 64 == 0 and max_len % t.seq_block == 0,
             f"a multiple of 64 dividing the cache length {max_len}"),
            ("head_dim", c.head_dim, c.head_dim % 16 == 0, "a multiple of 16"),
            ("d_model", c.d_model, c.d_model % 128 == 0, "a multiple of 128")]
  for name, value, ok, expected in checks:
    if not ok:
      raise ValueError(f"fused decode (mosaic): {name}={value!r}; expected {expected}")


def _spin(sem, target, limit):
  """Whether semaphore `sem` reached `target` within `limit` polls (acquire loads)."""
  value, _ = lax.while_loop(lambda c: (c[0] < target) & (c[1] < limit),
                            lambda c: (pl.semaphore_read(sem), c[1] + 1),
                            (pl.semaphore_read(sem), 0))
  return (value >= target).astype(jnp.int32)


def _grid_barrier(sems, nb: int, k, ok, last: bool = False):
  """Grid barrier number k (1, 2, ...) of this launch (see the module docstring). ok (int32
  0/1): no barrier of this block timed out so far; returns it updated. After a time-out a block
  waits no more (a grid whose blocks are not all resident then ends in about a second with NaN
  logits instead of hanging the GPU). sems[0] counts the arrivals (k * nb after barrier k);
  `last`: sems[1] counts the blocks past the last barrier, after which block 0 takes both back
  to zero (nobody polls them any more)."""
  count, done = sems.at[0], sems.at[1]
  limit = ok * _SPIN_LIMIT
  plgpu.semaphore_signal(count, 1, memory_scope="gpu")
  ok = ok * _spin(count, k * nb, limit)
  if last:
    plgpu.semaphore_signal(done, 1, memory_scope="gpu")

    def take():
      got = _spin(done, nb, limit)

      @pl.when(got == 1)
      def _():
        plgpu.semaphore_wait(done, nb, memory_scope="gpu")
        plgpu.semaphore_wait(count, k * nb, memory_scope="gpu")
      return got
    ok = ok * lax.cond(lax.axis_index("blocks") == 0, take, lambda: jnp.int32(1))
  return ok


def _splits(t: MosaicTiling, n_out: int, n_in: int) -> int:
  """Column splits of a GEMV phase: the largest divisor of its column tiles that keeps
  row tiles x splits <= t.items (or num_blocks), so that a phase with few output rows (the
  1.24B model's o and down projections have 32 row tiles) still streams from most SMs."""
  target, steps = t.items or t.num_blocks, n_in // t.chunk
  fits = [s for s in range(2, steps + 1) if steps % s == 0 and n_out // t.rows * s <= target]
  return max(fits, default=1)


def _items(t: MosaicTiling, n_out: int, n_in: int, splits: int):
  """(items, column tiles per item, tile(i, k): the (row tile, column tile) of step k of this
  block's i-th item) of a GEMV phase; item = row tile x splits + split, taken round-robin."""
  pid, nb = lax.axis_index("blocks"), t.num_blocks
  steps = n_in // t.chunk // splits
  tile = lambda i, k: ((pid + i * nb) // splits, (pid + i * nb) % splits * steps + k)
  return n_out // t.rows * splits, steps, tile


def _attn_splits(t: MosaicTiling, num_heads: int) -> int:
  """Cache splits per query head: about one attention item per block (at most 16)."""
  return max(1, min(16, (t.items or t.num_blocks) // num_heads))


def _prefetch(t: MosaicTiling, mats, n_out: int, n_in: int, splits: int):
  """Requests this block's first weight tiles of a GEMV phase into L2 (TMA prefetch), issued
  before the grid barrier that starts the phase: the HBM latency of the pipeline's first
  `stages` tiles overlaps the barrier (weights never depend on activations)."""
  n_items, steps, tile = _items(t, n_out, n_in, splits)
  for k in range(min(t.stages, steps) if t.prefetch else 0):
    r, col = tile(0, k)
    for m, _ in mats:
      plgpu.async_prefetch(m.at[pl.ds(r * t.rows, t.rows), pl.ds(col * t.chunk, t.chunk)],
                           predicate=lax.axis_index("blocks") < n_items)


def _plan(t: MosaicTiling, n_out: int, n_in: int, splits: int):
  """(this block's items, column tiles per item, tile(i, k), split(i)) of a GEMV phase."""
  pid, nb = lax.axis_index("blocks"), t.num_blocks
  n_items, steps, tile = _items(t, n_out, n_in, splits)
  mine = n_items if nb == 1 else (n_items - pid + nb - 1) // nb
  split = lambda i: (pid + i * nb) % splits
  return mine, steps, tile, split


def _widen(w):
  """A weight tile in float32. int8 goes through bfloat16, which holds every int8 exactly:
  Mosaic GPU converts int8 -> bf16 four elements at a time (byte permutes and a bf16x2
  subtract) and bf16 -> f32 by a shift, where a direct int8 -> f32 cast is one integer-to-float
  conversion per element, an instruction of low throughput on sm_90."""
  if w.dtype == jnp.int8:
    w = w.astype(jnp.bfloat16)
  return w.astype(f32)


def _tile_step(t: MosaicTiling, mats, steps: int, tile, split, x_smem, finish):
  """The step both forms of a GEMV phase run on a weight tile in SMEM: step((i, k), *w_smems,
  accs) adds (tile of each matrix) @ x[its columns] to the float32 row sums accs; the item's
  last step calls finish (see `_gemv_phase`)."""
  rows, tk = t.rows, t.chunk

  def step(idx, *refs):
    i, k = idx
    *w_smems, accs = refs
    col = (split(i) * steps + k) * tk
    x = plgpu.load(x_smem.at[pl.ds(col, tk)], layout=_COLS).astype(f32)
    xb = lax.broadcast_in_dim(x, (rows, tk), [1])
    keep = jnp.where(k == 0, 0.0, 1.0).astype(f32)
    accs = tuple(acc * keep + (_widen(plgpu.load(w, layout=_TILE)) * xb).sum(axis=1)
                 for w, acc in zip(w_smems, accs))

    @pl.when(k == steps - 1)
    def _():
      n0 = tile(i, k)[0] * rows
      finish(n0, split(i), [
          acc if s is None else acc * plgpu.load(s.at[pl.ds(n0, rows)], layout=_ROWS,
                                                 optimized=False)
          for acc, (_, s) in zip(accs, mats)])
    return accs
  return step


def _gemv_phase(t: MosaicTiling, mats, n_out: int, n_in: int, splits: int, x_smem, finish):
  """finish(n0, split, [W_m[n0:n0+rows, cols of split] @ x for each m]) over this block's
  items (row tile, column split); mats are pairs (rows [N, Din], per-row scales [N] or None) of
  GMEM views (int8 rows are exact in float32; their scales multiply the float32 row sums, as in
  kernel.py); x_smem holds the input (activation dtype) in its first n_in entries."""
  mine, steps, tile, split = _plan(t, n_out, n_in, splits)
  step = _tile_step(t, mats, steps, tile, split, x_smem, finish)
  zero = plgpu.layout_cast(jnp.zeros((t.rows,), f32), _ROWS)
  pipeline = plgpu.emit_pipeline(
      step, grid=(mine, steps), in_specs=[plgpu.BlockSpec((t.rows, t.chunk), tile) for _ in mats],
      max_concurrent_steps=t.stages, init_carry=tuple(zero for _ in mats))

  @pl.when(mine > 0)
  def _():
    pipeline(*(m for m, _ in mats))


def _ring_tiles(t: MosaicTiling, ring, mats, plan):
  """(n, issue) of a GEMV phase (its matrices and `_plan`) in the ring form: this block's n
  weight tiles (items x column tiles, one tile per matrix), and issue(q, i), which starts the
  TMA of its tile i into the ring's slot for stream position q (matrix m into ring m: the
  gate/up phase fills two)."""
  mine, steps, tile, _ = plan

  def issue(q, i):
    r, col = tile(i // steps, i % steps)
    slot = q % t.stages
    for (m, _), buf, bar in zip(mats, *ring):
      plgpu.copy_gmem_to_smem(m.at[pl.ds(r * t.rows, t.rows), pl.ds(col * t.chunk, t.chunk)],
                              buf.at[slot], bar.at[slot])
  return mine * steps, issue


def _ring_refill(t: MosaicTiling, ring, nxt):
  """refill(q, i): issues tile i of the phase that follows in the stream at position q; nxt
  lists (predicate, phase) pairs (the down phase is followed by the next layer's qkv or, after
  the last layer, by the LM head)."""
  nexts = [(when, *_ring_tiles(t, ring, mats, _plan(t, *dims)))
           for when, (mats, *dims) in nxt]

  def refill(q, i):
    for when, n, issue in nexts:
      pl.when(when & (i < n))(lambda issue=issue: issue(q, i))
  return refill


def _ring_top_up(t: MosaicTiling, refill, q, n):
  """After a phase of n tiles that ended at stream position q: issues the next phase's first
  tiles that the phase freed no slot for (those below stages - n), so that the next phase
  finds min(stages, its tiles) tiles issued (before the grid barrier that starts it)."""
  for i in range(t.stages):
    pl.when(i < t.stages - n)(lambda i=i: refill(q + i, i))


def _ring_phase(t: MosaicTiling, ring, phase, nxt, q, x_smem, finish):
  """`_gemv_phase` read from the ring: consumes this block's tiles at stream positions q, q+1,
  ... (slot q % stages; the first ones were issued before the phase), refilling each slot it
  frees with the stream's tile `stages` positions on: this phase's or, near its end, the next
  phase's (`_ring_refill`), so weight tiles keep streaming across the grid barrier. Returns
  the next phase's first position."""
  mats, *dims = phase
  plan = _plan(t, *dims)
  _, steps, tile, split = plan
  step = _tile_step(t, mats, steps, tile, split, x_smem, finish)
  n, issue = _ring_tiles(t, ring, mats, plan)
  refill = _ring_refill(t, ring, nxt)
  bufs, bars = ring

  def body(j, accs):
    slot = (q + j) % t.stages
    for _, bar in zip(mats, bars):
      plgpu.barrier_wait(bar.at[slot])
    accs = step((j // steps, j % steps), *(buf.at[slot] for _, buf in zip(mats, bufs)), accs)
    f = j + t.stages
    lax.cond(f < n, lambda: issue(q + f, f), lambda: refill(q + f, f - n))
    return accs

  zero = plgpu.layout_cast(jnp.zeros((t.rows,), f32), _ROWS)
  lax.fori_loop(0, n, body, tuple(zero for _ in mats))
  _ring_top_up(t, refill, q + n, n)
  return q + n


def _to_smem(vec, x_smem):
  """Stores a strided-layout [n] vector as the first n entries of x_smem."""
  x_smem[pl.ds(0, vec.shape[0])] = vec.astype(x_smem.dtype)


def _normed_to_smem(x, norm, eps: float, x_smem):
  """x_smem[:D] = RMSNorm(x) * norm in the activation dtype (every block recomputes rstd)."""
  rstd = lax.rsqrt(jnp.sum(x * x) / x.shape[0] + eps)
  _to_smem(x * rstd * norm[...], x_smem)


def _kernel(c, t: MosaicTiling, treedef, n_in: int, *refs):
  ins = jax.tree.unflatten(treedef, refs[:n_in])
  k_ref, v_ref = ins["cache"]
  (logits_ref, ok_ref, xs_ref, qkv_ref, o_ref, d_ref, attn_ref, h_ref, po_ref, pm_ref, ps_ref,
   x_smem, *ring) = refs[n_in:]
  ring = (ring[:2], ring[2:]) if t.ring else None  # ([slots] x 2 streams, [TMA barriers] x 2)
  w = ins["w"]
  L, D, H, G, K, F, V = (c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim,
                         c.mlp_dim, c.vocab_size)
  R, K2, bs, nb, NS = H // G, K // 2, t.seq_block, t.num_blocks, pm_ref.shape[1]
  act, cdt = c.act_dtype, c.cache_dtype
  pid = lax.axis_index("blocks")
  pos = ins["pos"][0]
  scale = K**-0.5
  # [the grid barrier's two, one attention counter per (layer, head) if NS > 1]
  n_sems = 2 + (L * H if NS > 1 else 0)
  sems = pl.get_global(plgpu.SemaphoreType.REGULAR((n_sems,))) if nb > 1 else None
  barrier = (lambda k, ok, last=False: _grid_barrier(sems, nb, k, ok, last)
             ) if nb > 1 else (lambda k, ok, last=False: ok)

  def layer_mat(rows_ref, scale_ref, l):
    return rows_ref.at[l], None if scale_ref is None else scale_ref.at[l]

  def store_to(parts_ref):
    def store(n0, s, ys):
      parts_ref[s, pl.ds(n0, t.rows)] = ys[0]
    return store

  def residual(a, parts_ref):
    """The residual stream: xs[a] plus the partial sums of the last o / down phase (each block
    adds them; block 0 also stores the sum in xs[1 - a], which no block reads in this phase)."""
    x = xs_ref[a]
    for s in range(parts_ref.shape[0]):
      x = x + parts_ref[s]

    @pl.when(pid == 0)
    def _():
      xs_ref[1 - a] = x
    return x

  @pl.when(pid == 0)
  def _():
    e = w.embed[ins["token"][0]].astype(f32)
    xs_ref[0] = e if w.sembed is None else e * w.sembed[ins["token"][0]]
    for s in range(d_ref.shape[0]):
      d_ref[s] = jnp.zeros((D,), f32)

  def phases(l):
    """Layer l's GEMV phases: (matrices, output rows, input columns, column splits)."""
    return (([layer_mat(w.wqkv, w.sqkv, l)], c.qkv_rows, D, qkv_ref.shape[0]),
            ([layer_mat(w.wo, w.so, l)], D, H * K, o_ref.shape[0]),
            ([layer_mat(w.wgate, w.sgate, l), layer_mat(w.wup, w.sup, l)], F, D, 1),
            ([layer_mat(w.wdown, w.sdown, l)], D, F, d_ref.shape[0]))
  head_p = ([w.lm_head()], V, D, 1)

  def gemv(phase, nxt, q, finish):
    """A GEMV phase by its own pipeline, or from the ring (then it returns the stream position
    after it; nxt: `_ring_refill`'s list of the phases that may follow)."""
    if ring is None:
      _gemv_phase(t, *phase, x_smem, finish)
      return q
    return _ring_phase(t, ring, phase, nxt, q, x_smem, finish)

  def prefetch(phase):  # the ring issues the next phase's tiles itself
    if ring is None:
      _prefetch(t, *phase)

  def layer(l, carry):
    ok, q = carry  # q: the ring's stream position (None without the ring)
    qkv_p, o_p, gu_p, down_p = phases(l)

    # qkv: rows of [q heads; k groups; v groups], column-split partial sums in qkv_ref.
    k0 = 1 + _PHASES * l  # this layer's first grid barrier
    prefetch(qkv_p)
    ok = barrier(k0, ok)
    _normed_to_smem(residual(0, d_ref), w.attn_norm.at[l], c.norm_eps, x_smem)
    q = gemv(qkv_p, [(True, o_p)], q, store_to(qkv_ref))

    # attn: item = (query head h of kv group g, split s of the cache positions < pos).
    ok = barrier(k0 + 1, ok)

    def attn_item(j, ok):
      h, s = (pid + j * nb) // NS, (pid + j * nb) % NS
      g = h // R
      part = lambda i, c0, n: plgpu.load(qkv_ref.at[i, pl.ds(c0, n)], layout=_COLS,
                                         optimized=False)
      qkv = lambda c0, n: sum(part(i, c0, n) for i in range(1, qkv_ref.shape[0])) + part(
          0, c0, n)
      half = lambda row, i: qkv(row * K + i * K2, K2)
      cs = plgpu.load(ins["rope"].at[0], layout=_COLS, optimized=False)
      sn = plgpu.load(ins["rope"].at[1], layout=_COLS, optimized=False)
      rot = lambda a, b: (a * cs - b * sn, b * cs + a * sn)
      q1, q2 = rot(half(h, 0), half(h, 1))
      k1, k2 = rot(half(H + g, 0), half(H + g, 1))
      k1, k2 = k1.astype(cdt), k2.astype(cdt)
      vn = qkv((H + G + g) * K, K).astype(cdt)

      @pl.when((h % R == 0) & (s == 0))
      def _():
        k_ref[l, pos, g, pl.ds(0, K2)] = k1
        k_ref[l, pos, g, pl.ds(K2, K2)] = k2
        v_ref[l, pos, g, :] = vn

      k1, k2, vn = k1.astype(f32), k2.astype(f32), vn.astype(f32)
      # Split 0 also owns the current token: its running softmax starts from it.
      first = (s == 0).astype(f32)
      m0 = jnp.where(s == 0, (jnp.sum(q1 * k1) + jnp.sum(q2 * k2)) * scale, -jnp.inf)
      qb1, qb2 = (lax.broadcast_in_dim(q, (bs, K2), [1]) for q in (q1, q2))

      def block(idx, kc1, kc2, vc, carry):
        m, lsum, acc = carry
        t0 = (s + idx[0] * NS) * bs
        dot = lambda kc, qb: (plgpu.load(kc, layout=_TILE).astype(f32) * qb).sum(axis=1)
        logit = (dot(kc1, qb1) + dot(kc2, qb2)) * scale
        tpos = t0 + plgpu.broadcasted_iota(jnp.int32, (bs,), 0, layout=_ROWS)
        valid = tpos < pos
        logit = jnp.where(valid, logit, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(logit))  # finite: a tile's first position is < pos
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(logit - m_new)
        vt = plgpu.load(vc, layout=_TILE).astype(f32)
        vt = jnp.where(lax.broadcast_in_dim(valid, (bs, K), [0]), vt, 0.0)
        acc = acc * alpha + (lax.broadcast_in_dim(p, (bs, K), [0]) * vt).sum(axis=0)
        return m_new, lsum * alpha + jnp.sum(p), acc

      # split s reads cache tiles s, s + NS, ... below pos
      mine = jnp.maximum((pos + bs - 1) // bs - s + NS - 1, 0) // NS
      spec = lambda cols: plgpu.BlockSpec((bs, cols), lambda i: (s + i * NS, 0))
      pipeline = plgpu.emit_pipeline(block, grid=(mine,), in_specs=[spec(K2), spec(K2), spec(K)],
                                     max_concurrent_steps=2, init_carry=(m0, first, vn * first))
      kv = lambda ref, c0, n: ref.at[l, :, g, pl.ds(c0, n)]
      m, lsum, acc = lax.cond(mine > 0,
                              lambda: pipeline(kv(k_ref, 0, K2), kv(k_ref, K2, K2),
                                               kv(v_ref, 0, K)),
                              lambda: (m0, first, vn * first))
      if NS == 1:
        attn_ref[pl.ds(h * K, K)] = (acc / lsum).astype(act)
        return ok
      # Splits 0 .. NS-2 store their partial softmax and signal the head's counter; split NS-1
      # (a later item: it never waits for a block that waits for it) waits for them, takes the
      # counter back to zero and merges. Without semaphores (num_blocks == 1) the items run in
      # order, so the others are done.
      sem = sems.at[2 + l * H + h] if nb > 1 else None

      @pl.when(s < NS - 1)
      def _():
        po_ref[h, s, :] = acc
        pm_ref[h, s] = m
        ps_ref[h, s] = lsum
        if nb > 1:
          plgpu.semaphore_signal(sem, 1, memory_scope="gpu")

      def merge():
        got = _spin(sem, NS - 1, ok * _SPIN_LIMIT) if nb > 1 else jnp.int32(1)
        if nb > 1:
          pl.when(got == 1)(lambda: plgpu.semaphore_wait(sem, NS - 1, memory_scope="gpu"))
        ms = [pm_ref[h, i] for i in range(NS - 1)] + [m]
        mx = functools.reduce(jnp.maximum, ms)
        wts = [jnp.exp(mi - mx) for mi in ms]
        total = sum(wi * ps_ref[h, i] for i, wi in enumerate(wts[:-1])) + wts[-1] * lsum
        o = sum(wi * plgpu.load(po_ref.at[h, i], layout=_COLS, optimized=False)
                for i, wi in enumerate(wts[:-1])) + wts[-1] * acc
        attn_ref[pl.ds(h * K, K)] = (o / total).astype(act)
        return got
      return ok * lax.cond(s == NS - 1, merge, lambda: jnp.int32(1))

    n_attn = H * NS if nb == 1 else (H * NS - pid + nb - 1) // nb
    ok = lax.fori_loop(0, n_attn, attn_item, ok)

    # o: partial sums of Wo attn into o_ref (added to the residual by the next phase).
    prefetch(o_p)
    ok = barrier(k0 + 2, ok)
    _to_smem(attn_ref[...], x_smem)
    q = gemv(o_p, [(True, gu_p)], q, store_to(o_ref))

    # gu: h = silu(Wgate n(x)) * Wup n(x).
    prefetch(gu_p)
    ok = barrier(k0 + 3, ok)
    _normed_to_smem(residual(1, o_ref), w.mlp_norm.at[l], c.norm_eps, x_smem)

    def gu_store(n0, s, ys):
      gate, up = ys
      h_ref[pl.ds(n0, t.rows)] = (gate / (1.0 + jnp.exp(-gate)) * up).astype(act)
    q = gemv(gu_p, [(True, down_p)], q, gu_store)

    # down: partial sums of Wdown h into d_ref.
    prefetch(down_p)
    ok = barrier(k0 + 4, ok)
    _to_smem(h_ref[...], x_smem)
    nxt = [(l < L - 1, phases(l + 1)[0]), (l == L - 1, head_p)] if ring is not None else None
    q = gemv(down_p, nxt, q, store_to(d_ref))
    return ok, q

  q = None
  if ring is not None:  # the stream's first tiles (layer 0's qkv), before the first barrier
    q = jnp.int32(0)
    _ring_top_up(t, _ring_refill(t, ring, [(True, phases(0)[0])]), q, 0)
  ok, q = lax.fori_loop(0, L, layer, (jnp.int32(1), q))
  prefetch(head_p)
  ok_ref[pid] = barrier(1 + _PHASES * L, ok, last=True)
  _normed_to_smem(residual(0, d_ref), w.final_norm, c.norm_eps, x_smem)

  def head_store(n0, s, ys):
    logits_ref[pl.ds(n0, t.rows)] = ys[0]
  gemv(head_p, [], q, head_store)


@functools.partial(jax.jit, static_argnames=("tiling", "interpret"), donate_argnums=(1,))
def fused_decode_call_mgpu(weights: FusedWeights, cache, token, position, *,
                           tiling: MosaicTiling, interpret: bool = False):
  """Logits [V] (float32) and the updated cache (donated, written in place through refs)."""
  c = weights.config
  S = cache[0].shape[1]
  check_mosaic(c, tiling, S)
  K, H = c.head_dim, c.num_heads
  L, D = c.num_layers, c.d_model
  ang = jnp.asarray(position, f32) * c.rope_inv_freq()
  # The o-projection's [L, D, H, K] rows as [L, D, H K] (a free reshape) for 2-D TMA tiles.
  w = dataclasses.replace(weights, wo=weights.wo.reshape(L, D, H * K))
  cache_refs = tuple(jax.new_ref(x) for x in cache)
  ins = {"w": w, "token": jnp.asarray(token, jnp.int32).reshape(1),
         "pos": jnp.asarray(position, jnp.int32).reshape(1),
         "rope": jnp.stack([jnp.cos(ang), jnp.sin(ang)]), "cache": cache_refs}
  flat, treedef = jax.tree.flatten(ins)
  sds = jax.ShapeDtypeStruct
  splits = [_splits(tiling, n_out, n_in) for n_out, n_in in
            ((c.qkv_rows, D), (D, H * K), (D, c.mlp_dim))]
  NS = _attn_splits(tiling, H)
  out_type = [sds((c.vocab_size,), f32), sds((tiling.num_blocks,), jnp.int32), sds((2, D), f32),
              *(sds((s, n), f32) for s, n in zip(splits, (c.qkv_rows, D, D))),
              sds((H * K,), c.act_dtype), sds((c.mlp_dim,), c.act_dtype),
              sds((H, NS, K), f32), sds((H, NS), f32), sds((H, NS), f32)]
  scratch = [plgpu.SMEM((max(D, H * K, c.mlp_dim),), c.act_dtype)]
  if tiling.ring:  # two streams (gate and up) of `stages` weight tiles, one TMA barrier a slot
    ring_tile = (tiling.stages, tiling.rows, tiling.chunk)
    scratch += [plgpu.SMEM(ring_tile, weights.wqkv.dtype) for _ in range(2)]
    scratch += [plgpu.Barrier(num_barriers=tiling.stages) for _ in range(2)]
  kernel = plgpu.kernel(
      functools.partial(_kernel, c, tiling, treedef, len(flat)), out_type=out_type,
      scratch_types=scratch, grid=(tiling.num_blocks,), grid_names=("blocks",),
      interpret=plgpu.InterpretGPUParams() if interpret else None,
      kernel_name="fused_decode_mgpu")
  logits, ok = kernel(*flat)[:2]
  return jnp.where(jnp.all(ok == 1), logits, jnp.nan), tuple(r[...] for r in cache_refs)
