"""Gated DeltaNet and log-linear Gated DeltaNet mixers (docs/algorithms/gdn.md#layer,
docs/algorithms/loglinear.md#lambda-parametrisation,
docs/algorithms/loglinear.md#log-linear-gated-deltanet; fla's `layers/gated_deltanet.py`).

    q, k = L2norm(SiLU(conv_4(W_q x))), L2norm(SiLU(conv_4(W_k x)))   per head, G q/k heads
    v    = SiLU(conv_4(W_v x))                                         H value heads of dim V
    g    = -exp(A_log) * softplus(W_a x + dt_bias)      (log-decay alpha = exp(g), per value head)
    beta = sigmoid(W_b x)                               (x 2 with allow_neg_eigval)
    o    = GDN(q K^-1/2, k, v, g, beta)                 (log-linear: with lambda)
    out  = W_o(RMSNorm_head(o) * SiLU(W_gate x))

Options (`model.mixer_options.gdn` / `.loglinear_gdn`): num_heads (G q/k heads, default
model.num_heads), num_v_heads (H >= G, a multiple; default num_heads: GVA when larger), head_dim
(K, default model.head_dim), expand_v (V = expand_v * K, 2 as in fla), d_conv (4),
allow_neg_eigval (False), dt_min / dt_max (1e-3 / 0.1). The log-linear variant adds LevelScales
per value head and runs the log-linear GDN op; with lambda = 1 it is GDN with the same weights.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.cache import (MixerCache, cached_convs, full_sequence_convs,
                                  linear_state_zeros, start_prefill)
from lloglin.layers.conv import ShortConv
from lloglin.layers.gates import a_log_init, dt_bias_init, l2_normalize
from lloglin.layers.linear import dense
from lloglin.layers.loglinear import LevelScales
from lloglin.layers.norms import GatedRMSNorm
from lloglin.layers.registry import (KernelDispatch, mixer_dispatch, mixer_options,
                                     register_mixer)
from lloglin.layers.remat import tag_mixer_core
from lloglin.layers.tp_split import groups_split, local_group
from lloglin.ops.attention import sanitize_padding
from lloglin.ops.gdn import gdn_chunked, gdn_step
from lloglin.ops.loglinear import loglinear_gdn_chunked, loglinear_gdn_step
from pallas_kernels import gdn as pallas_gdn


# pallas_kernels.gdn serves this mixer ('pallas' selects it).
HAS_PALLAS_KERNEL = True


def gdn_sequence(dispatch: KernelDispatch, q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *,
                 segment_ids_BT, chunk_size: int, scale: float, return_final_state: bool = False):
  """The full-sequence gated delta rule (log-linear when lam_BTHL is given) as `dispatch` says
  (the layer's model.mixer_impl, decided by registry.mixer_dispatch), for training and for
  prefill (return_final_state). The kernels take packed documents too and return final states
  (pallas_kernels.gdn.chunked docstring).
  """
  kw = dict(segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
            return_final_state=return_final_state)
  if dispatch.kernel:
    kw["interpret"] = dispatch.interpret
    loglinear_op, gdn_op = pallas_gdn.loglinear_gdn_chunked, pallas_gdn.gdn_chunked
  else:
    loglinear_op, gdn_op = loglinear_gdn_chunked, gdn_chunked
  if lam_BTHL is not None:
    return loglinear_op(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, **kw)
  return gdn_op(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, **kw)


@register_mixer("gdn")
class GatedDeltaNet(nnx.Module):
  mixer_name = "gdn"
  loglinear = False
  # 'auto' takes the Pallas kernels on Hopper: both pass the GPU tests and train (fwd+bwd) faster
  # than their XLA chunked forms (log-linear GDN's XLA form timed in a separate call, not beside
  # its kernel): benchmarks/RESULTS.md#mixer-kernels and its lab log.

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    opts = mixer_options(cfg, self.mixer_name, dict(
        num_heads=cfg.num_heads, num_v_heads=None, head_dim=cfg.head_dim, expand_v=2, d_conv=4,
        allow_neg_eigval=False, dt_min=1e-3, dt_max=1e-1))
    D, G, K = cfg.d_model, opts["num_heads"], opts["head_dim"]
    H = G if opts["num_v_heads"] is None else opts["num_v_heads"]
    if G < 1 or H % G:
      raise ValueError(f"{self.mixer_name}: num_v_heads={H} must be a positive multiple of "
                       f"num_heads={G}")
    V = int(opts["expand_v"] * K)
    if V < 1 or V != opts["expand_v"] * K:
      raise ValueError(f"{self.mixer_name}: expand_v * head_dim = {opts['expand_v'] * K} must be "
                       f"a positive integer")
    self.num_heads, self.num_v_heads, self.head_dim, self.v_dim = G, H, K, V
    self.beta_scale = 2.0 if opts["allow_neg_eigval"] else 1.0
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
    conv = lambda channels: ShortConv(channels, opts["d_conv"], use_bias=False, activation=True,
                                      **kw)
    self.q_proj, self.q_conv = dense(D, G * K, **kw), conv(G * K)
    self.k_proj, self.k_conv = dense(D, G * K, **kw), conv(G * K)
    self.v_proj, self.v_conv = dense(D, H * V, **kw), conv(H * V)
    self.a_proj = dense(D, H, **kw)
    self.b_proj = dense(D, H, **kw)
    self.A_log = nnx.Param(a_log_init(rngs.params(), H, a_min=0.0, a_max=16.0,
                                      dtype=cfg.weight_dtype))
    self.dt_bias = nnx.Param(dt_bias_init(rngs.params(), H, dt_min=opts["dt_min"],
                                          dt_max=opts["dt_max"], dtype=cfg.weight_dtype))
    self.gate_proj = dense(D, H * V, **kw)
    self.norm = GatedRMSNorm(V, norm_before_gate=True, eps=cfg.norm_eps,
                             param_dtype=cfg.weight_dtype)
    self.o_proj = dense(H * V, D, **kw)
    self.level_scales = LevelScales(D, H, cfg.max_seq_len, **kw) if self.loglinear else None
    self.dispatch = mixer_dispatch(cfg.mixer_impl, self.mixer_name, has_kernel=HAS_PALLAS_KERNEL)
    self.chunk_size, self.dtype = cfg.chunk_size, cfg.compute_dtype

  def __call__(self, x_BTD, *, segment_ids_BT=None, positions_BT=None):
    del positions_BT  # the state resets at document starts (segment ids); no position encoding
    return self._sequence(x_BTD, segment_ids_BT)

  def _sequence(self, x_BTD, segment_ids_BT, select_qk=None):
    """The full-sequence call; `select_qk` (tensor parallelism, tp_call) cuts q and k."""
    (x_BTD,) = sanitize_padding(segment_ids_BT, x_BTD)  # NaN-safe padding, also for gradients
    q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL = self._gdn_inputs(
        x_BTD, full_sequence_convs(segment_ids_BT), select_qk)
    o_BTHV = gdn_sequence(self.dispatch, q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL,
                          segment_ids_BT=segment_ids_BT, chunk_size=self.chunk_size,
                          scale=self.head_dim**-0.5)
    return self._output(tag_mixer_core(o_BTHV), x_BTD)

  def _gdn_inputs(self, x_BTD, conv, select_qk=None):
    """Projections, short convs and gates: (q, k, v, g, beta, lam) of the gated delta rule op.
    Shared by __call__, prefill and step; conv(i, module, x_BTC) runs short conv i (q, k, v).
    Head counts come from the parameters' shapes, so tp_call runs this on its shards;
    select_qk(q_BTGK) keeps the q/k heads this device reads when they are replicated."""
    B, T, _ = x_BTD.shape
    K, V = self.head_dim, self.v_dim
    q_BTGK = l2_normalize(conv(0, self.q_conv, self.q_proj(x_BTD)).reshape(B, T, -1, K))
    k_BTGK = l2_normalize(conv(1, self.k_conv, self.k_proj(x_BTD)).reshape(B, T, -1, K))
    if select_qk is not None:
      q_BTGK, k_BTGK = select_qk(q_BTGK), select_qk(k_BTGK)
    v_BTHV = conv(2, self.v_conv, self.v_proj(x_BTD)).reshape(B, T, -1, V)
    g_BTH = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(
        self.a_proj(x_BTD).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
    beta_BTH = self.beta_scale * jax.nn.sigmoid(self.b_proj(x_BTD).astype(jnp.float32))
    lam_BTHL = None if self.level_scales is None else self.level_scales(x_BTD)
    return (q_BTGK.astype(self.dtype), k_BTGK.astype(self.dtype), v_BTHV, g_BTH, beta_BTH,
            lam_BTHL)

  def _output(self, o_BTHV, x_BTD):
    """Gated per-head RMSNorm and o_proj."""
    B, T, H, V = o_BTHV.shape
    o_BTHV = self.norm(o_BTHV, self.gate_proj(x_BTD).reshape(B, T, H, V))
    return self.o_proj(o_BTHV.reshape(B, T, H * V))

  def init_cache(self, batch_size: int, max_len: int, dtype) -> MixerCache:
    """q/k/v conv states (dtype) and the float32 state: [B, H, K, V], or one per level."""
    B, H, K, V = batch_size, self.num_v_heads, self.head_dim, self.v_dim
    conv_BWC = tuple(c.init_state(B, dtype) for c in (self.q_conv, self.k_conv, self.v_conv))
    levels = None if self.level_scales is None else self.level_scales.num_levels
    return MixerCache(conv_BWC, linear_state_zeros(B, H, K, V, levels=levels, max_len=max_len))

  def prefill(self, x_BTD, cache: MixerCache, lengths_B=None):
    """Chunked gated delta rule (model.mixer_impl's) over right-padded prompts, returning the
    state after each row."""
    x_BTD, segment_ids_BT, conv, conv_BWC = start_prefill(x_BTD, cache, lengths_B)
    q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL = self._gdn_inputs(x_BTD, conv)
    o_BTHV, core = gdn_sequence(self.dispatch, q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL,
                                segment_ids_BT=segment_ids_BT, chunk_size=self.chunk_size,
                                scale=self.head_dim**-0.5, return_final_state=True)
    return self._output(o_BTHV, x_BTD), MixerCache(tuple(conv_BWC), core)

  def step(self, x_BD, cache: MixerCache):
    """One token through gdn_step (log-linear: loglinear_gdn_step on the Fenwick state)."""
    conv, conv_BWC = cached_convs(cache.conv_BWC)
    x_B1D = x_BD[:, None]
    q_BGK, k_BGK, v_BHV, g_BH, beta_BH, lam_BHL = (
        None if a is None else a[:, 0] for a in self._gdn_inputs(x_B1D, conv))
    scale = self.head_dim**-0.5
    if lam_BHL is None:
      o_BHV, core = gdn_step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, cache.core, scale=scale)
    else:
      o_BHV, core = loglinear_gdn_step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, lam_BHL, cache.core,
                                       scale=scale)
    return self._output(o_BHV[:, None], x_B1D)[:, 0], MixerCache(tuple(conv_BWC), core)

  # Tensor parallelism (lloglin.parallel.tensor_parallel): device r of tp holds value heads
  # [r*H/tp, (r+1)*H/tp) with their projections, convs, gates and lambda; the q/k heads (G) are
  # split when tp divides G, else replicated with device r reading the one its value heads
  # read (lloglin.layers.tp_split). The per-head norm needs nothing across devices.

  def _tp_qk_split(self, tp: int) -> bool:
    opts = f"model.mixer_options.{self.mixer_name}"
    return groups_split(self.mixer_name, f"{opts}.num_v_heads", self.num_v_heads,
                        f"{opts}.num_heads", self.num_heads, tp)

  def tp_param_axes(self, tp: int) -> dict:
    qk = "heads" if self._tp_qk_split(tp) else None
    axes = {"q_proj.kernel": ("embed", qk), "q_conv.kernel": (None, qk),
            "k_proj.kernel": ("embed", qk), "k_conv.kernel": (None, qk),
            "v_proj.kernel": ("embed", "heads"), "v_conv.kernel": (None, "heads"),
            "a_proj.kernel": ("embed", "heads"), "b_proj.kernel": ("embed", "heads"),
            "A_log": ("heads",), "dt_bias": ("heads",), "gate_proj.kernel": ("embed", "heads"),
            "o_proj.kernel": ("heads", "embed")}
    if self.level_scales is not None:
      axes.update(self.level_scales.tp_axes("level_scales."))
    return axes

  def tp_call(self, x_BTD, *, tp: int, axis_name: str, segment_ids_BT=None, positions_BT=None):
    """This device's partial output: its value heads through the row-parallel o_proj."""
    del positions_BT
    select_qk = (None if self._tp_qk_split(tp)
                 else lambda a: local_group(a, 2, self.num_heads, tp, axis_name))
    return self._sequence(x_BTD, segment_ids_BT, select_qk)


@register_mixer("loglinear_gdn")
class LogLinearGatedDeltaNet(GatedDeltaNet):
  """Gated DeltaNet with the log-linear (Fenwick) hierarchy of states, weighted by lambda."""
  mixer_name = "loglinear_gdn"
  loglinear = True
