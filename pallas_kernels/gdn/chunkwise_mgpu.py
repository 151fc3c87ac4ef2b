"""GDN's forward state scan (chunkwise.py's `state_scan`) as a Mosaic GPU kernel (`plgpu.kernel`),
the first training kernel off the deprecated Pallas-Triton lowering; selected by
KernelConfig(backend='mosaic') (chunkwise.state_scan dispatches here).

Same inputs, outputs, dtypes and recurrence as the Triton kernel: per chunk of C tokens, with S
the float32 state at the chunk start,

  h_n = S;  Vn = U - rho o (W S);  S <- gam' S + K^T (a o Vn),  a = wm o e^{G_C - G}

(gam' = e^{G_C}, or 0 when a document starts in the chunk). Grid (B, H, V / BV), one warpgroup
per block:
- S stays in registers (the WGMMA accumulator layout) across chunks; K, W and U chunks stream
  GMEM -> SMEM by TMA through `plgpu.emit_pipeline` (two chunks in flight); h and Vn stream back
  SMEM -> GMEM through the same pipeline.
- W S: S is written to the h tile in SMEM in the input dtype (the dtype h is stored in, the
  dtype the Triton kernel's dot rounds it to) and is the WGMMA B operand; W comes from SMEM.
- K^T (a o Vn): K's SMEM tile read transposed as the WGMMA A operand (no copy), (a o Vn) in the
  input dtype from SMEM as B, added to gam' S in registers. The Triton kernel
  rounds e^{G_C - G} o K and wm o Vn to the input dtype instead; here the row scale a is folded
  into Vn before rounding, one rounding fewer, so the two agree to the input dtype's precision.
- The per-chunk gates (in-chunk cumsum of g, e^{G_C - G}, gam') and the masks' folding (a, gam')
  are computed in XLA before the kernel: [B, H, P] float32, small beside the [B, P, H, K] streams.
Limits: 16-bit inputs (WGMMA reads S^T-free B operands only in 16-bit types here), C and K
multiples of 64 (the WGMMA M dimension of W S and K^T Vn), BV a multiple of 16 (the SMEM
swizzle: 128 bytes from BV = 64 in bf16, 64 at 32, 32 at 16; the two operands of a WGMMA must
share it, so K's and W's tiles take that of the [*, BV] tiles).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

__all__ = ['check', 'state_scan']

f32 = jnp.float32
_TILE = plgpu.Layout.WGMMA
_ROWS = plgpu.Layout.WGMMA.reduce(1)   # a [rows] vector, one value per row of a WGMMA tile
_STAGES = 2                            # chunks in flight in the pipeline


def check(L):
  """ValueError naming the first launch field the Mosaic state scan cannot serve."""
  checks = [('dtype', jnp.dtype(L.mm).name, jnp.dtype(L.mm).itemsize == 2,
             'bfloat16 or float16'),
            ('chunk_size', L.C, L.C % 64 == 0, 'a multiple of 64'),
            ('K (key width)', L.K, L.K % 64 == 0, 'a multiple of 64'),
            ('block_v', L.BV, L.BV % 16 == 0, 'a multiple of 16')]
  for name, value, ok, expected in checks:
    if not ok:
      raise ValueError(f"GDN state scan (backend='mosaic'): {name}={value!r}; expected {expected}")


def _transforms(BV, itemsize):
  """SMEM tiling and swizzle of every WGMMA operand tile: one swizzle for all (the two operands
  of a WGMMA must share it), the widest that a [*, BV] tile's rows hold (128, 64 or 32 bytes)."""
  swizzle = min(128, BV * itemsize)
  return (plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle))


def _gates(L, g_BHP):
  """(a_BHP, gam_BHN): the row scale a = wm o e^{G_C - G} of K^T Vn and the chunk decay gam'
  (0 where a document starts in the chunk), float32."""
  B, H, P = g_BHP.shape
  N = P // L.C
  G_BHNC = jnp.cumsum(g_BHP.astype(f32).reshape(B, H, N, L.C), axis=-1)
  gs_BHN = G_BHNC[..., -1]
  a_BHP = jnp.exp(gs_BHN[..., None] - G_BHNC).reshape(B, H, P)
  gam_BHN = jnp.exp(gs_BHN)
  if L.masks is not None:
    a_BHP = a_BHP * L.masks.wm[:, None, :]
    keep_BN = jnp.max(L.masks.keep.reshape(B, N, L.C), axis=-1) > 0
    gam_BHN = jnp.where(keep_BN[:, None, :], gam_BHN, 0.0)
  return a_BHP, gam_BHN


def _matmul(a_smem, b_smem, acc):
  """a @ b into the zeroed WGMMA accumulator acc, read back into registers (which waits for it).
  (Accumulating onto the carried state with pl.run_state(...)(plgpu.ACC.init(S)) would save one
  add, but the Mosaic GPU interpreter does not run pl.run_state.)"""
  plgpu.wgmma(acc, a_smem, b_smem)
  return acc[...]


def _kernel(*refs, C, K, BV, R, N, packed, with_init, with_final):
  k_ref, w_ref, u_ref, a_ref, gam_ref = refs[:5]
  rest = list(refs[5:])
  rho_ref = rest.pop(0) if packed else None
  init_ref = rest.pop(0) if with_init else None
  h_ref, vn_ref = rest[:2]
  final_ref = rest[2] if with_final else None
  h_smem, vn_smem, vb_smem = rest[-3:]
  b, h, j = (lax.axis_index(n) for n in ('b', 'h', 'j'))
  cols = pl.ds(j * BV, BV)
  dt = u_ref.dtype

  def rows_of(ref, c):
    """A [C] vector of chunk c broadcast over the columns of a [C, BV] WGMMA tile."""
    x = plgpu.load(ref.at[pl.ds(c * C, C)], layout=_ROWS, optimized=False)
    return lax.broadcast_in_dim(x, (C, BV), [0])

  def step(idx, k_smem, w_smem, u_smem, S):
    c = idx[0]
    # The gates and masks first: their GMEM latency overlaps the first matmul.
    a, gam = rows_of(a_ref.at[b, h], c), gam_ref[b, h, c]
    rho = rows_of(rho_ref.at[b], c) if packed else None
    slot = c % _STAGES
    plgpu.wait_smem_to_gmem(_STAGES - 1, wait_read_only=True)   # this slot's last stores
    h_out, vn_out = h_smem.at[slot], vn_smem.at[slot]
    h_out[...] = S.astype(dt)
    plgpu.commit_smem()
    ws = pl.run_scoped(functools.partial(_matmul, w_smem, h_out), plgpu.ACC((C, BV), f32))
    vn = plgpu.load(u_smem, layout=_TILE).astype(f32) - (ws if rho is None else ws * rho)
    vn_out[...] = vn.astype(dt)
    vb_smem[...] = (vn * a).astype(dt)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(h_out, h_ref.at[b, h, pl.ds(c * K, K), cols], commit_group=False)
    plgpu.copy_smem_to_gmem(vn_out, vn_ref.at[b, pl.ds(c * C, C), h, cols], commit_group=False)
    plgpu.commit_smem_to_gmem_group()
    kv = pl.run_scoped(functools.partial(_matmul, k_smem.transpose((1, 0)), vb_smem),
                       plgpu.ACC((K, BV), f32))
    return gam * S + kv

  spec = lambda width: plgpu.BlockSpec(  # noqa: E731
      (C, width), lambda c: (c, 0), transforms=_transforms(BV, jnp.dtype(dt).itemsize))
  if with_init:
    S0 = plgpu.load(init_ref.at[b, h, :, cols], layout=_TILE, optimized=False)
  else:
    S0 = plgpu.layout_cast(jnp.zeros((K, BV), f32), _TILE)
  pipeline = plgpu.emit_pipeline(step, grid=(N,), max_concurrent_steps=min(_STAGES, N),
                                 init_carry=S0, in_specs=[spec(K), spec(K), spec(BV)])
  S = pipeline(k_ref.at[b, :, h // R, :], w_ref.at[b, :, h, :], u_ref.at[b, :, h, cols])
  if with_final:
    final_ref[b, h, :, cols] = S
  plgpu.wait_smem_to_gmem(0)


def state_scan(L, k_BPGK, w_BPHK, u_BPHV, g_BHP, init_BHKV=None, with_final=False):
  """chunkwise.state_scan on Mosaic GPU (L: its _Launch): h_BHMV, Vn_BPHV and, with with_final,
  the float32 final state_BHKV."""
  check(L)
  a_BHP, gam_BHN = _gates(L, g_BHP)
  with_init = init_BHKV is not None
  N = L.P // L.C
  sds = jax.ShapeDtypeStruct
  transforms = _transforms(L.BV, jnp.dtype(L.mm).itemsize)
  out_type = [sds((L.B, L.H, N * L.K, L.V), L.mm), sds((L.B, L.P, L.H, L.V), L.mm)] + (
      [sds((L.B, L.H, L.K, L.V), f32)] if with_final else [])
  kernel = plgpu.kernel(
      lambda *refs: _kernel(*refs, C=L.C, K=L.K, BV=L.BV, R=L.H // k_BPGK.shape[2], N=N,
                            packed=L.packed, with_init=with_init, with_final=with_final),
      out_type=out_type,
      scratch_types=[plgpu.SMEM((_STAGES,) + shape, L.mm, transforms=transforms)
                     for shape in ((L.K, L.BV), (L.C, L.BV))]
      + [plgpu.SMEM((L.C, L.BV), L.mm, transforms=transforms)],
      grid=(L.B, L.H, L.V // L.BV), grid_names=('b', 'h', 'j'),
      interpret=plgpu.InterpretGPUParams() if L.interpret else None,
      kernel_name=L.name('state_scan_mgpu'))
  rho = [L.masks.rho] if L.packed else []
  init = [init_BHKV.astype(f32)] if with_init else []
  return kernel(k_BPGK, w_BPHK, u_BPHV, a_BHP, gam_BHN, *rho, *init)
