"""PaTH attention and PaTH-FoX mixers (arXiv 2505.16381; docs/algorithms/path.md#layer; fla's
`layers/path_attn.py`).

    q, k, v = W_q x, W_k x, W_v x                    H query heads, G key/value heads (GQA)
    w       = L2norm_head(SiLU(conv_3(W_w x)))       W_w low-rank (D -> 32 -> G K) without GQA
    beta    = 2 sigmoid(W_beta x + b)                in (0, 2), per key/value head
    g       = logsigmoid(W_f x + b_f)                PaTH-FoX only: forget gate per query head
    out     = W_o PaTH(q, k, v, w, beta, g)          no RoPE: positions come from the H_t products

Options (`model.mixer_options.path` / `.path_fox`): low_rank_w (default: True without GQA,
False with it, as fla), w_rank (32), w_conv (3; 0 = no short conv), qk_norm (False: per-head
RMSNorm of q and k), linear_memory (False: where the Pallas kernels run, those whose fwd+bwd
memory grows linearly in T instead of T log T, at about half the speed; for long contexts where
memory binds). w, beta and g are computed in float32.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.cache import (MixerCache, cached_convs, full_sequence_convs,
                                  start_prefill)
from lloglin.layers.conv import ShortConv
from lloglin.layers.gates import l2_normalize
from lloglin.layers.linear import dense
from lloglin.layers.norms import RMSNorm
from lloglin.layers.registry import (KernelDispatch, mixer_dispatch, mixer_options,
                                     register_mixer)
from lloglin.layers.attention import attention_kv_split
from lloglin.layers.remat import tag_mixer_core
from lloglin.layers.tp_split import local_group
from lloglin.ops.attention import sanitize_padding
from lloglin.ops.path import path_blockwise, path_cache_init, path_prefill, path_step
from pallas_kernels import path as pallas_path


# pallas_kernels.path serves this mixer (so 'auto' picks it on Hopper GPUs).
HAS_PALLAS_KERNEL = True


def path_sequence_fn(dispatch: KernelDispatch, head_dim: int, value_dim: int, block_size: int,
                     linear_memory: bool = False):
  """The full-sequence PaTH function as `dispatch` says (the layer's model.mixer_impl, decided by
  registry.mixer_dispatch), with `path_blockwise`'s signature.

  The kernel is `path_attention`, or with `linear_memory` the slower
  `path_attention_linear_memory` whose memory is linear in T. Sizes the kernels cannot tile
  (head dims or chunk size that are not powers of two >= 16, `pallas_path.supports`) run the
  blockwise XLA form instead (its memory is linear in T too).
  """
  if dispatch.kernel and pallas_path.supports(head_dim, value_dim, block_size):
    kernel = (pallas_path.path_attention_linear_memory if linear_memory
              else pallas_path.path_attention)
    return functools.partial(kernel, interpret=dispatch.interpret)
  return path_blockwise


@register_mixer("path")
class PathAttention(nnx.Module):
  mixer_name = "path"
  forget_gate = False

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    H, G, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
    opts = mixer_options(cfg, self.mixer_name, dict(
        low_rank_w=H == G, w_rank=32, w_conv=3, qk_norm=False, linear_memory=False))
    if not isinstance(opts["linear_memory"], bool):
      raise ValueError(f"model.mixer_options.{self.mixer_name}.linear_memory="
                       f"{opts['linear_memory']!r}; expected True or False")
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
    self.q_proj = dense(D, H * K, **kw)
    self.k_proj = dense(D, G * K, **kw)
    self.v_proj = dense(D, G * K, **kw)
    if opts["low_rank_w"]:
      self.w_down, self.w_up = dense(D, opts["w_rank"], **kw), dense(opts["w_rank"], G * K, **kw)
    else:
      self.w_down, self.w_up = None, dense(D, G * K, **kw)
    self.w_conv = (ShortConv(G * K, opts["w_conv"], use_bias=False, activation=True, **kw)
                   if opts["w_conv"] else None)
    self.beta_proj = dense(D, G, use_bias=True, **kw)
    self.forget_proj = dense(D, H, use_bias=True, **kw) if self.forget_gate else None
    if opts["qk_norm"]:
      norm_kw = dict(eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
      self.q_norm, self.k_norm = RMSNorm(K, **norm_kw), RMSNorm(K, **norm_kw)
    else:
      self.q_norm = self.k_norm = None
    self.o_proj = dense(H * K, D, **kw)
    self.num_heads, self.num_kv_heads, self.head_dim = H, G, K
    self.dispatch = mixer_dispatch(cfg.mixer_impl, self.mixer_name, has_kernel=HAS_PALLAS_KERNEL)
    self.chunk_size = cfg.chunk_size
    self.linear_memory = opts["linear_memory"]

  def __call__(self, x_BTD, *, segment_ids_BT=None, positions_BT=None):
    del positions_BT  # no position encoding: the Householder products carry the order
    return self._sequence(x_BTD, segment_ids_BT)

  def _sequence(self, x_BTD, segment_ids_BT, select_kv=None):
    """The full-sequence call; `select_kv` (tensor parallelism, tp_call) cuts the kv heads."""
    (x_BTD,) = sanitize_padding(segment_ids_BT, x_BTD)  # NaN-safe padding, also for gradients
    q_BTHK, k_BTGK, v_BTGK, w_BTGK, beta_BTG, g_BTH = self._path_inputs(
        x_BTD, full_sequence_convs(segment_ids_BT), select_kv)
    o_BTHK = self._sequence_fn()(q_BTHK, k_BTGK, v_BTGK, w_BTGK, beta_BTG, g_BTH=g_BTH,
                                 segment_ids_BT=segment_ids_BT, block_size=self.chunk_size)
    return self._output(tag_mixer_core(o_BTHK))

  def _sequence_fn(self):
    return path_sequence_fn(self.dispatch, self.head_dim, self.head_dim, self.chunk_size,
                            self.linear_memory)

  def _path_inputs(self, x_BTD, conv, select_kv=None):
    """Projections, w short conv and gates: (q, k, v, w, beta, g) of the PaTH op. Shared by
    __call__, prefill and step; conv(i, module, x_BTC) runs the short conv of w. Head counts
    come from the parameters' shapes, so tp_call runs this on its shards; select_kv(a_BTG...)
    keeps the kv heads this device reads when they are replicated."""
    B, T, _ = x_BTD.shape
    K = self.head_dim
    q_BTHK = self.q_proj(x_BTD).reshape(B, T, -1, K)
    k_BTGK = self.k_proj(x_BTD).reshape(B, T, -1, K)
    v_BTGK = self.v_proj(x_BTD).reshape(B, T, -1, K)
    if self.q_norm is not None:
      q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
    w_BTC = self.w_up(x_BTD if self.w_down is None else self.w_down(x_BTD))
    if self.w_conv is not None:
      w_BTC = conv(0, self.w_conv, w_BTC)
    w_BTGK = l2_normalize(w_BTC.reshape(B, T, -1, K))
    beta_BTG = 2.0 * jax.nn.sigmoid(self.beta_proj(x_BTD).astype(jnp.float32))
    if select_kv is not None:
      k_BTGK, v_BTGK, w_BTGK, beta_BTG = map(select_kv, (k_BTGK, v_BTGK, w_BTGK, beta_BTG))
    g_BTH = (None if self.forget_proj is None
             else jax.nn.log_sigmoid(self.forget_proj(x_BTD).astype(jnp.float32)))
    return q_BTHK, k_BTGK, v_BTGK, w_BTGK, beta_BTG, g_BTH

  def _output(self, o_BTHK):
    B, T = o_BTHK.shape[:2]
    return self.o_proj(o_BTHK.reshape(B, T, -1))

  def init_cache(self, batch_size: int, max_len: int, dtype) -> MixerCache:
    """w conv state and a PathCache of max_len positions (keys/values in dtype, float32 gates)."""
    conv_BWC = () if self.w_conv is None else (self.w_conv.init_state(batch_size, dtype),)
    K = self.head_dim
    core = path_cache_init(batch_size, max_len, self.num_kv_heads, K, K, dtype=dtype,
                           num_heads=self.num_heads if self.forget_gate else None)
    return MixerCache(conv_BWC, core)

  def prefill(self, x_BTD, cache: MixerCache, lengths_B=None):
    """PaTH over right-padded prompts (the kernel or the blockwise form, as model.mixer_impl
    picks); the cache holds their keys transformed to each row's end (ops.path.path_prefill)."""
    S = cache.core.k_BSGK.shape[1]
    x_BTD, _, conv, conv_BWC = start_prefill(x_BTD, cache, lengths_B, S)
    q_BTHK, k_BTGK, v_BTGK, w_BTGK, beta_BTG, g_BTH = self._path_inputs(x_BTD, conv)
    o_BTHK, core = path_prefill(q_BTHK, k_BTGK, v_BTGK, w_BTGK, beta_BTG, g_BTH=g_BTH,
                                length_B=lengths_B, cache_size=S, block_size=self.chunk_size,
                                sequence_fn=self._sequence_fn())
    core = jax.tree.map(lambda new, old: new.astype(old.dtype), core, cache.core)
    return self._output(o_BTHK), MixerCache(tuple(conv_BWC), core)

  def step(self, x_BD, cache: MixerCache):
    """One token through path_step: rank-1 update of every cached key, then attention."""
    conv, conv_BWC = cached_convs(cache.conv_BWC)
    q_BHK, k_BGK, v_BGK, w_BGK, beta_BG, g_BH = (
        None if a is None else a[:, 0] for a in self._path_inputs(x_BD[:, None], conv))
    o_BHK, core = path_step(q_BHK, k_BGK, v_BGK, w_BGK, beta_BG, cache.core, g_BH=g_BH)
    return self._output(o_BHK[:, None])[:, 0], MixerCache(tuple(conv_BWC), core)

  # Tensor parallelism (lloglin.parallel.tensor_parallel): as attention, device r of tp holds
  # query heads [r*H/tp, (r+1)*H/tp) (q, the forget gate, o_proj's rows); the kv heads (k, v,
  # w, beta) are split when tp divides their count G, else replicated with device r reading the
  # one its query heads read (lloglin.layers.tp_split). w's low-rank down projection and the
  # q/k norms (over the head dim) are whole.

  def _tp_kv_split(self, tp: int) -> bool:
    return attention_kv_split(self.num_heads, self.num_kv_heads, tp, mixer=self.mixer_name)

  def tp_param_axes(self, tp: int) -> dict:
    kv = "kv_heads" if self._tp_kv_split(tp) else None
    axes = {"q_proj.kernel": ("embed", "heads"), "k_proj.kernel": ("embed", kv),
            "v_proj.kernel": ("embed", kv), "w_up.kernel": (None, kv),
            "beta_proj.kernel": ("embed", kv), "beta_proj.bias": (kv,),
            "o_proj.kernel": ("heads", "embed")}
    if self.w_conv is not None:
      axes["w_conv.kernel"] = (None, kv)
    if self.forget_proj is not None:
      axes.update({"forget_proj.kernel": ("embed", "heads"), "forget_proj.bias": ("heads",)})
    return axes

  def tp_call(self, x_BTD, *, tp: int, axis_name: str, segment_ids_BT=None, positions_BT=None):
    """This device's partial output: its query heads through the row-parallel o_proj."""
    del positions_BT
    select_kv = (None if self._tp_kv_split(tp)
                 else lambda a: local_group(a, 2, self.num_kv_heads, tp, axis_name))
    return self._sequence(x_BTD, segment_ids_BT, select_kv)


@register_mixer("path_fox")
class PathFoxAttention(PathAttention):
  """PaTH attention with the Forgetting Transformer's data-dependent forget gate."""
  mixer_name = "path_fox"
  forget_gate = True
