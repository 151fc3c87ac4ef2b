"""Mamba-2 (SSD) and log-linear Mamba-2 mixers (docs/algorithms/mamba2.md#layer,
docs/algorithms/loglinear.md#lambda-parametrisation,
docs/algorithms/loglinear.md#log-linear-mamba-2).

    z, xBC, dt = in_proj(x)                      z, x: d_inner = expand * d_model
    x, B, C    = SiLU(conv_4(xBC))               B, C: G groups of d_state N
    Delta      = softplus(dt + dt_bias),  A = -exp(A_log)            (per head, H = d_inner / P)
    y          = SSD(q=C, k=B, v=Delta x, g=Delta A) + D x           (log-linear: with lambda)
    out        = out_proj(RMSNorm(y * SiLU(z)))                      (groups of d_inner / G)

Options (`model.mixer_options.mamba2` / `.loglinear_mamba2`): d_state (N, 128), expand (2),
head_dim (P, default model.head_dim), ngroups (G, 1), d_conv (4), dt_min / dt_max (1e-3 / 0.1),
a_min / a_max (the A ~ U(a_min, a_max) init, 1 / 16). The log-linear variant adds LevelScales
(lloglin.layers.loglinear) and runs the log-linear SSD op; everything else is shared, so with
lambda = 1 it is Mamba-2 with the same weights. Mamba-2's A_log is initialised the same way in
both (fla's LogLinearMamba2 uses log(1..H) instead).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.cache import (MixerCache, cached_convs, full_sequence_convs,
                                  linear_state_zeros, start_prefill)
from lloglin.layers.conv import ShortConv
from lloglin.layers.gates import a_log_init, dt_bias_init
from lloglin.layers.linear import dense
from lloglin.layers.loglinear import LevelScales
from lloglin.layers.norms import GatedRMSNorm
from lloglin.layers.registry import (KernelDispatch, mixer_dispatch, mixer_options,
                                     register_mixer)
from lloglin.layers.remat import tag_mixer_core
from lloglin.layers.tp_split import group_range, groups_split, local_blocks
from lloglin.ops.attention import sanitize_padding
from lloglin.ops.loglinear import loglinear_ssd_chunked, loglinear_ssd_step
from lloglin.ops.mamba2 import ssd_chunked, ssd_step
from pallas_kernels import mamba2 as pallas_mamba2


# pallas_kernels.mamba2 serves this mixer (so 'auto' picks it on Hopper GPUs).
HAS_PALLAS_KERNEL = True


def ssd_sequence(dispatch: KernelDispatch, q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *,
                 segment_ids_BT, chunk_size: int, return_final_state: bool = False):
  """The full-sequence SSD (log-linear SSD when lam_BTHL is given) as `dispatch` says (the
  layer's model.mixer_impl, decided by registry.mixer_dispatch), for training and for prefill
  (return_final_state). The kernels take packed documents too, and return final states
  (pallas_kernels.mamba2.chunked docstring).
  """
  kw = dict(segment_ids_BT=segment_ids_BT, chunk_size=chunk_size,
            return_final_state=return_final_state)
  if dispatch.kernel:
    kw["interpret"] = dispatch.interpret
    loglinear_op, ssd_op = pallas_mamba2.loglinear_ssd_chunked, pallas_mamba2.ssd_chunked
  else:
    loglinear_op, ssd_op = loglinear_ssd_chunked, ssd_chunked
  if lam_BTHL is not None:
    return loglinear_op(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, **kw)
  return ssd_op(q_BTGK, k_BTGK, v_BTHV, g_BTH, **kw)


@jax.checkpoint
def _delta_scaled(x_BTHP, delta_BTH):
  """x * Delta in float32, in x's dtype. Rematerialised: the backward keeps x (in its own dtype)
  and Delta, not x's float32 copy."""
  return (x_BTHP.astype(jnp.float32) * delta_BTH[..., None]).astype(x_BTHP.dtype)


@register_mixer("mamba2")
class Mamba2(nnx.Module):
  mixer_name = "mamba2"
  loglinear = False

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    opts = mixer_options(cfg, self.mixer_name, dict(
        d_state=128, expand=2, head_dim=cfg.head_dim, ngroups=1, d_conv=4, dt_min=1e-3,
        dt_max=1e-1, a_min=1.0, a_max=16.0))
    D = cfg.d_model
    d_inner, P, G, N = opts["expand"] * D, opts["head_dim"], opts["ngroups"], opts["d_state"]
    if d_inner % P:
      raise ValueError(f"mamba2: expand * d_model = {d_inner} must be a multiple of head_dim={P}")
    H = d_inner // P
    if H % G:
      raise ValueError(f"mamba2: the {H} heads (expand * d_model / head_dim) must be a multiple "
                       f"of ngroups={G}")
    self.d_inner, self.num_heads, self.head_dim, self.ngroups, self.d_state = d_inner, H, P, G, N
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
    conv_dim = d_inner + 2 * G * N
    self.in_proj = dense(D, d_inner + conv_dim + H, **kw)
    self.conv = ShortConv(conv_dim, opts["d_conv"], use_bias=True, activation=True, **kw)
    self.dt_bias = nnx.Param(dt_bias_init(rngs.params(), H, dt_min=opts["dt_min"],
                                          dt_max=opts["dt_max"], dtype=cfg.weight_dtype))
    self.A_log = nnx.Param(a_log_init(rngs.params(), H, a_min=opts["a_min"], a_max=opts["a_max"],
                                      dtype=cfg.weight_dtype))
    self.D = nnx.Param(jnp.ones((H,), cfg.weight_dtype))
    self.norm = GatedRMSNorm(d_inner, group_size=d_inner // G, norm_before_gate=False,
                             eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
    self.out_proj = dense(d_inner, D, **kw)
    self.level_scales = (LevelScales(D, H, cfg.max_seq_len, **kw) if self.loglinear else None)
    self.dispatch = mixer_dispatch(cfg.mixer_impl, self.mixer_name, has_kernel=HAS_PALLAS_KERNEL)
    self.chunk_size = cfg.chunk_size

  def __call__(self, x_BTD, *, segment_ids_BT=None, positions_BT=None):
    del positions_BT  # the state resets at document starts (segment ids); no position encoding
    return self._sequence(x_BTD, segment_ids_BT)

  def _sequence(self, x_BTD, segment_ids_BT, shard=None):
    """The full-sequence call; `shard` (tensor parallelism: _TPShard) is this device's part."""
    (x_BTD,) = sanitize_padding(segment_ids_BT, x_BTD)  # NaN-safe padding, also for gradients
    conv = full_sequence_convs(segment_ids_BT)
    if shard is not None:
      conv = lambda i, module, x_BTC: module.apply(x_BTC, shard.conv_kernel_WC, shard.conv_bias_C,
                                                   segment_ids_BT=segment_ids_BT)
    (q_BTGN, k_BTGN, v_BTHP, g_BTH, lam_BTHL), skip = self._ssd_inputs(x_BTD, conv, shard)
    y_BTHP = ssd_sequence(self.dispatch, q_BTGN, k_BTGN, v_BTHP, g_BTH, lam_BTHL,
                          segment_ids_BT=segment_ids_BT, chunk_size=self.chunk_size)
    return self._output(tag_mixer_core(y_BTHP), *skip, shard=shard)

  def _ssd_inputs(self, x_BTD, conv, shard=None):
    """in_proj, short conv, gates: ((q, k, v, g, lam) of the SSD op, (x_BTHP, z_BTE) for the
    output). Shared by __call__, prefill and step; conv(i, module, x_BTC) runs the short conv.
    `shard` (tensor parallelism) gives this device's in_proj columns, d_inner and groups."""
    B, T, _ = x_BTD.shape
    P, N = self.head_dim, self.d_state
    if shard is None:
      G, d_inner, proj_BTF = self.ngroups, self.d_inner, self.in_proj(x_BTD)
    else:
      G, d_inner, proj_BTF = shard.ngroups, shard.d_inner, shard.in_proj(x_BTD)
    z_BTE, xbc_BTC, dt_BTH = jnp.split(proj_BTF, [d_inner, 2 * d_inner + 2 * G * N], axis=-1)
    xbc_BTC = conv(0, self.conv, xbc_BTC)
    x_BTE, b_BTC, c_BTC = jnp.split(xbc_BTC, [d_inner, d_inner + G * N], axis=-1)
    delta_BTH = jax.nn.softplus(dt_BTH.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
    a_H = -jnp.exp(self.A_log[...].astype(jnp.float32))
    x_BTHP = x_BTE.reshape(B, T, -1, P)
    v_BTHP = _delta_scaled(x_BTHP, delta_BTH)
    lam_BTHL = None if self.level_scales is None else self.level_scales(x_BTD)
    ssd_args = (c_BTC.reshape(B, T, G, N), b_BTC.reshape(B, T, G, N), v_BTHP, delta_BTH * a_H,
                lam_BTHL)
    return ssd_args, (x_BTHP, z_BTE)

  def _output(self, y_BTHP, x_BTHP, z_BTE, shard=None):
    """D skip, gated RMSNorm (tensor parallelism: over this device's channels, its sums of
    squares completed across the devices of each norm group), out_proj."""
    B, T = y_BTHP.shape[:2]
    y_BTHP = y_BTHP + x_BTHP * self.D[...].astype(x_BTHP.dtype)[:, None]
    y_BTE = y_BTHP.reshape(B, T, -1)
    if shard is None:
      y_BTE = self.norm(y_BTE, z_BTE)
    else:
      y_BTE = self.norm.sharded(y_BTE, z_BTE, shards_per_group=shard.shards_per_group,
                                axis_name=shard.axis_name)
    return self.out_proj(y_BTE)

  def init_cache(self, batch_size: int, max_len: int, dtype) -> MixerCache:
    """Conv state (dtype) and the float32 SSM state: [B, H, N, P], or one per level."""
    B, H, N, P = batch_size, self.num_heads, self.d_state, self.head_dim
    levels = None if self.level_scales is None else self.level_scales.num_levels
    return MixerCache((self.conv.init_state(B, dtype),),
                      linear_state_zeros(B, H, N, P, levels=levels, max_len=max_len))

  def prefill(self, x_BTD, cache: MixerCache, lengths_B=None):
    """Chunked SSD (model.mixer_impl's) over right-padded prompts, returning the state after
    each row's prompt."""
    x_BTD, segment_ids_BT, conv, conv_BWC = start_prefill(x_BTD, cache, lengths_B)
    (q_BTGN, k_BTGN, v_BTHP, g_BTH, lam_BTHL), skip = self._ssd_inputs(x_BTD, conv)
    y_BTHP, core = ssd_sequence(self.dispatch, q_BTGN, k_BTGN, v_BTHP, g_BTH, lam_BTHL,
                                segment_ids_BT=segment_ids_BT, chunk_size=self.chunk_size,
                                return_final_state=True)
    return self._output(y_BTHP, *skip), MixerCache(tuple(conv_BWC), core)

  def step(self, x_BD, cache: MixerCache):
    """One token through ssd_step (log-linear: loglinear_ssd_step on the Fenwick state)."""
    conv, conv_BWC = cached_convs(cache.conv_BWC)
    ssd_args, skip = self._ssd_inputs(x_BD[:, None], conv)
    q_BGN, k_BGN, v_BHP, g_BH, lam_BHL = (None if a is None else a[:, 0] for a in ssd_args)
    if lam_BHL is None:
      y_BHP, core = ssd_step(q_BGN, k_BGN, v_BHP, g_BH, cache.core)
    else:
      y_BHP, core = loglinear_ssd_step(q_BGN, k_BGN, v_BHP, g_BH, lam_BHL, cache.core)
    return self._output(y_BHP[:, None], *skip)[:, 0], MixerCache(tuple(conv_BWC), core)

  # Tensor parallelism (lloglin.parallel.tensor_parallel): device r of tp holds heads
  # [r*H/tp, (r+1)*H/tp): their channels of z and x, dt, dt_bias, A_log, D, the norm scale,
  # out_proj's rows and lambda. B and C are split by group when tp divides ngroups, else
  # replicated with device r reading the group its heads read (lloglin.layers.tp_split). in_proj
  # and the conv concatenate [z | x | B | C | dt] ([x | B | C]) in their columns, which contiguous
  # blocks cannot split: they stay whole and each device takes its columns of every part. The
  # norm groups (d_inner / ngroups channels) that span several devices (tp > ngroups) sum their
  # squares over those devices, so the math is the one-device model's.

  def _tp_groups_split(self, tp: int) -> bool:
    opts = f"model.mixer_options.{self.mixer_name}"
    return groups_split(self.mixer_name, "heads (expand * d_model / head_dim)", self.num_heads,
                        f"{opts}.ngroups", self.ngroups, tp)

  def tp_param_axes(self, tp: int) -> dict:
    self._tp_groups_split(tp)
    axes = {"dt_bias": ("heads",), "A_log": ("heads",), "D": ("heads",), "norm.scale": ("heads",),
            "out_proj.kernel": ("heads", "embed")}
    if self.level_scales is not None:
      axes.update(self.level_scales.tp_axes("level_scales."))
    return axes

  def tp_call(self, x_BTD, *, tp: int, axis_name: str, segment_ids_BT=None, positions_BT=None):
    """This device's partial output: its heads through the row-parallel out_proj."""
    del positions_BT
    return self._sequence(x_BTD, segment_ids_BT, _TPShard(self, tp, axis_name))


class _TPShard:
  """One device's part of a Mamba-2 layer's fused parameters (see Mamba2's tensor-parallel
  notes): its in_proj columns and conv channels, and its sizes."""

  def __init__(self, layer: Mamba2, tp: int, axis_name: str):
    E, G, N, H = layer.d_inner, layer.ngroups, layer.d_state, layer.num_heads
    g0, self.ngroups = group_range(G, tp, axis_name, layer._tp_groups_split(tp))
    r = jax.lax.axis_index(axis_name)
    self.d_inner, self.axis_name = E // tp, axis_name
    self.shards_per_group = max(tp // G, 1)
    e0, bc = r * self.d_inner, self.ngroups * N
    # (offset of the part in the fused columns, this device's start in it, size)
    xbc = [(0, e0, self.d_inner), (E, g0 * N, bc), (E + G * N, g0 * N, bc)]
    proj = [(0, e0, self.d_inner)] + [(E + o, s, n) for o, s, n in xbc] + [
        (2 * E + 2 * G * N, r * (H // tp), H // tp)]
    self.in_kernel_DF = local_blocks(layer.in_proj.kernel[...], 1, proj)
    self.dtype, self.precision = layer.in_proj.dtype, layer.in_proj.precision
    self.conv_kernel_WC = local_blocks(layer.conv.kernel[...], 1, xbc)
    self.conv_bias_C = local_blocks(layer.conv.bias[...], 0, xbc)

  def in_proj(self, x_BTD):
    """x @ this device's in_proj columns, as nnx.Linear computes (both in its dtype)."""
    return jnp.dot(x_BTD.astype(self.dtype), self.in_kernel_DF.astype(self.dtype),
                   precision=self.precision)


@register_mixer("loglinear_mamba2")
class LogLinearMamba2(Mamba2):
  """Mamba-2 with the log-linear (Fenwick) hierarchy of states, weighted per level by lambda."""
  mixer_name = "loglinear_mamba2"
  loglinear = True
