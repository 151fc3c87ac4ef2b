"""Chunked log-linear Mamba-2 and plain Mamba-2 SSD (hierarchy off) through the Pallas kernel of
kernel.py: launch (padding, batch splits, the aligned / packed choice) and the jax.custom_vjp.

Same signatures and semantics as lloglin.ops.loglinear.loglinear_ssd_chunked and
lloglin.ops.mamba2.ssd_chunked, plus `interpret` (run the kernels through the Pallas interpreter,
for CPU tests). One kernel (kernel.level_scan, Pallas Triton lowering) serves every pass:

  forward   o   = causal(q, k, v)                     (scale folded into q)
  backward  dq  = causal(dO, v, k), dlam from its per-level terms dotted with q
            dk  = anti(v, dO, q),  dv = anti(k, q, dO)
            dg  = reverse cumsum over t of (q . dq - k . dk)   (per head; g enters as a cumsum;
                  the dq and dk passes carry their states into the matmuls as hi + lo bf16, so
                  their rounding does not add up along T in this sum)

wired through jax.custom_vjp; q/k gradients of grouped heads are summed over their group.

Served by the kernels: any segment_ids_BT (None, or one document per row from position 0 followed by
padding, decided at run time: the fast aligned kernels; packed documents: the same kernels in packed
mode, levels from positions inside each document and one masked stream per level >= 1, several times
slower fwd+bwd: benchmarks/RESULTS.md#lab-log), chunk_size >= 16. Both models are linear in their
state, so the kernels run from an empty state and XLA adds the rest beside them
(lloglin.ops.linear_recurrence.state_terms, O(T K V) einsums): the initial state's reads and the
final state (log-linear: the Fenwick levels), so chunked prefill and its continuation run through
the kernels. A log-linear initial state also moves the positions (they continue from its t_B): the
packed kernels then run with every level. chunk_size < 16 and T beyond the capacity of the L levels
fall back, explicitly, to the lloglin.ops XLA chunked form (same results, XLA speed), so no argument
is ever silently ignored. Feature axes are zero-padded to powers of two (>= 16) and T to whole
chunks; batches whose arrays would reach 2^31 elements are split so that no kernel offset overflows
int32.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lloglin.ops import checks
from lloglin.ops import hierarchy
from lloglin.ops import linear_recurrence
from lloglin.ops import loglinear as ops_loglinear
from lloglin.ops import mamba2 as ops_mamba2
from pallas_kernels.linear_recurrence import (LOGLINEAR_SSD_CONFIG, SSD_CONFIG, KernelConfig,
                                              gate_layouts, in_row_batches, launch_config,
                                              one_document_per_row, padded_inputs, pow2)
from pallas_kernels.mamba2 import kernel_mgpu
from pallas_kernels.mamba2.kernel import level_scan

__all__ = ['loglinear_ssd_chunked', 'ssd_chunked']

HIGHEST = lax.Precision.HIGHEST


class _Static(NamedTuple):
  chunk_size: int
  scale: float
  levels: int | None          # None: hierarchy off (plain SSD)
  interpret: bool
  config: KernelConfig
  offset: bool = False        # positions continue an initial state's t_B (packed mode, all levels)


def _scan(a, b, c, g_BHP, lam_BHLP, pos_BP, doc_BP, qx=None, *, st, heads, reverse, out_dtype,
          precise_states=False):
  """level_scan, split along the batch so that no array reaches 2^31 elements; the Mosaic GPU
  kernel (kernel_mgpu) under backend='mosaic'."""
  P = a.shape[1]
  per_row = P * max([x.shape[2] * x.shape[3] for x in (a, b, c) + ((qx,) if qx is not None else ())]
                    + [heads * c.shape[3]]
                    + ([heads * lam_BHLP.shape[2] * (c.shape[3] // min(st.config.block_v,
                                                                        c.shape[3]))]
                       if lam_BHLP is not None else []))
  common = dict(heads=heads, chunk_size=st.chunk_size, reverse=reverse, levels=st.levels,
                out_dtype=out_dtype, block_v=st.config.block_v, precise_states=precise_states,
                all_levels=st.offset, interpret=st.interpret)
  if st.config.backend == 'mosaic':
    fn = functools.partial(kernel_mgpu.level_scan, **common)
  else:
    fn = functools.partial(level_scan, num_warps=st.config.num_warps,
                           num_stages=st.config.num_stages, **common)
  return in_row_batches(fn, (a, b, c, g_BHP, lam_BHLP, qx, pos_BP, doc_BP), per_row,
                        f'pallas loglinear kernels (T={P}, heads={heads})',
                        out_axes=0 if qx is None else (0, 1))


def _forward(q, k, v, g, lam, pos, doc, st):
  H = v.shape[2]
  g_BHP, lam_BHLP = gate_layouts(g, lam)
  return _scan(q * st.scale, k, v, g_BHP, lam_BHLP, pos, doc, st=st, heads=H, reverse=False,
               out_dtype=v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, lam_BPHL, pos_BP, doc_BP, st):
  """Padded inputs (P = whole chunks, power-of-two feature axes, padding zeroed) -> o_BPHV."""
  return _forward(q_BPGK, k_BPGK, v_BPHV, g_BPH, lam_BPHL, pos_BP, doc_BP, st)


def _mixer_fwd(q, k, v, g, lam, pos, doc, st):
  return _forward(q, k, v, g, lam, pos, doc, st), (q, k, v, g, lam, pos, doc)


def _mixer_bwd(st, res, do_BPHV):
  q, k, v, g, lam, pos, doc = res
  B, P, G, K = q.shape
  H = v.shape[2]
  R = H // G
  g_BHP, lam_BHLP = gate_layouts(g, lam)
  qs = q * st.scale
  do = do_BPHV.astype(v.dtype)
  scan = functools.partial(_scan, g_BHP=g_BHP, lam_BHLP=lam_BHLP, pos_BP=pos, doc_BP=doc, st=st,
                           heads=H, out_dtype=jnp.float32)
  # dq and dk feed dg's reverse cumsum over the sequence: their state products in hi + lo bf16
  precise = functools.partial(scan, precise_states=True)
  if lam is None:
    dqs_BPHK, dlam = precise(do, v, k, reverse=False), None
  else:
    dqs_BPHK, dlam_JBHLP = precise(do, v, k, qx=qs, reverse=False)
    dlam_BPHL = jnp.transpose(jnp.sum(dlam_JBHLP, axis=0), (0, 3, 1, 2))
    dlam = jnp.pad(dlam_BPHL, ((0, 0), (0, 0), (0, 0), (0, lam.shape[3] - dlam_BPHL.shape[3])))
    dlam = dlam.astype(lam.dtype)
  dk_BPHK = precise(v, do, qs, reverse=True)
  dv = scan(k, qs, do, reverse=True).astype(v.dtype)
  rep = lambda x: jnp.repeat(x, R, axis=2).astype(jnp.float32)
  dG_BPH = (jnp.einsum('bphk,bphk->bph', rep(qs), dqs_BPHK, precision=HIGHEST)
            - jnp.einsum('bphk,bphk->bph', rep(k), dk_BPHK, precision=HIGHEST))
  dg = lax.cumsum(dG_BPH, axis=1, reverse=True).astype(g.dtype)
  group = lambda x: jnp.sum(x.reshape(B, P, G, R, K), axis=3)
  dq = (group(dqs_BPHK) * st.scale).astype(q.dtype)
  dk = group(dk_BPHK).astype(k.dtype)
  return dq, dk, dv, dg, dlam, None, None


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


@functools.partial(jax.jit, static_argnames=('chunk_size', 'scale', 'with_levels', 'interpret',
                                             'config'))
def _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, segment_ids_BT, t0_B=None, *, chunk_size,
         scale, with_levels, interpret, config):
  """o_BTHV from an empty state; t0_B (log-linear): the first document's positions start there
  (the packed kernels, every level)."""
  B, T, G, K = q_BTGK.shape
  V = v_BTHV.shape[-1]
  if t0_B is not None and segment_ids_BT is None:
    segment_ids_BT = hierarchy.dense_segment_ids(B, T)
  (q, k, v, g, lam), real_BP = padded_inputs(
      [q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL if with_levels else None], segment_ids_BT,
      chunk_size, [pow2(K), pow2(K), pow2(V), None, None])
  pos_BP = doc_BP = None
  if segment_ids_BT is not None:
    lay = linear_recurrence.layout_of(segment_ids_BT, B, T, t0_B, g.shape[1])
    pos_BP = jnp.where(real_BP, lay.pos_BT, -1)
    doc_BP = lay.doc_BT
  H = v_BTHV.shape[2]
  config = launch_config(config, LOGLINEAR_SSD_CONFIG if with_levels else SSD_CONFIG, B * H, V,
                         backends=('triton', 'mosaic'))
  st = _Static(chunk_size, float(scale), lam_BTHL.shape[-1] if with_levels else None, interpret,
               config, t0_B is not None)
  aligned = lambda: _mixer(q, k, v, g, lam, None, None, st)  # noqa: E731
  packed = lambda: _mixer(q, k, v, g, lam, pos_BP, doc_BP, st)  # noqa: E731
  if segment_ids_BT is None:
    return aligned()[:, :T, :, :V]
  # Rows holding one document from position 0 (the trainer passes segment ids even then) take
  # the aligned kernels, several times faster than the packed mode (benchmarks/RESULTS.md#lab-log,
  # "Log-linear Mamba-2 and Mamba-2 SSD"). Offset positions always take the packed ones.
  o_BPHV = packed() if st.offset else lax.cond(one_document_per_row(segment_ids_BT), aligned,
                                                 packed)
  (o_BPHV,) = linear_recurrence.sanitize(real_BP, o_BPHV)
  return o_BPHV[:, :T, :, :V]


def loglinear_ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *, initial_state=None,
                          segment_ids_BT=None, chunk_size=64, scale=1.0,
                          return_final_state=False, interpret=False, config=None):
  """Log-linear Mamba-2 (lloglin.ops.loglinear.loglinear_ssd_chunked) through the Pallas kernels.

  The initial state's reads and the final state come from XLA beside the kernels (module
  docstring); chunk_size < 16 and T > 2^(L-1) run the XLA form.
  """
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          lam_BTHL=lam_BTHL, segment_ids_BT=segment_ids_BT,
                          initial_state=initial_state, chunk_size=chunk_size)
  T, L = v_BTHV.shape[1], lam_BTHL.shape[-1]
  if chunk_size < 16 or T > hierarchy.capacity(L):
    return ops_loglinear.loglinear_ssd_chunked(
        q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, initial_state=initial_state,
        segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
        return_final_state=return_final_state)
  t0_B = None if initial_state is None else jnp.asarray(initial_state.t_B, jnp.int32)
  o_BTHV = _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, segment_ids_BT, t0_B,
                chunk_size=chunk_size, scale=float(scale), with_levels=True, interpret=interpret,
                config=config)
  if initial_state is None and not return_final_state:
    return o_BTHV
  return ops_loglinear.loglinear_ssd_state_terms(
      o_BTHV, q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, initial_state=initial_state,
      segment_ids_BT=segment_ids_BT, scale=scale, return_final_state=return_final_state)


def ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None, segment_ids_BT=None,
                chunk_size=64, scale=1.0, return_final_state=False, interpret=False,
                config=None):
  """Mamba-2 SSD (lloglin.ops.mamba2.ssd_chunked): the same kernels with the hierarchy off.

  The initial state's reads and the final state come from XLA beside the kernels (module
  docstring); chunk_size < 16 runs the XLA form.
  """
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          segment_ids_BT=segment_ids_BT, initial_state_BHKV=initial_state_BHKV,
                          chunk_size=chunk_size)
  if chunk_size < 16:
    return ops_mamba2.ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH,
                                  initial_state_BHKV=initial_state_BHKV,
                                  segment_ids_BT=segment_ids_BT, chunk_size=chunk_size,
                                  scale=scale, return_final_state=return_final_state)
  o_BTHV = _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, None, segment_ids_BT, chunk_size=chunk_size,
                scale=float(scale), with_levels=False, interpret=interpret, config=config)
  if initial_state_BHKV is None and not return_final_state:
    return o_BTHV
  return ops_mamba2.ssd_state_terms(o_BTHV, q_BTGK, k_BTGK, v_BTHV, g_BTH,
                                    initial_state_BHKV=initial_state_BHKV,
                                    segment_ids_BT=segment_ids_BT, scale=scale,
                                    return_final_state=return_final_state)
