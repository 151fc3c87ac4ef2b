"""Causal softmax attention with RoPE and grouped-query heads (the Transformer baseline mixer),
and its tensor-parallel plan (`tp_param_axes`, `tp_call`: lloglin.parallel.tensor_parallel)."""

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.cache import KVCache, check_prefill, prompt_segment_ids
from lloglin.layers.linear import dense
from lloglin.layers.registry import register_mixer
from lloglin.layers.remat import tag_mixer_core
from lloglin.layers.tp_split import groups_split, local_group
from lloglin.ops.attention import apply_rope, attention_step, causal_attention, sanitize_padding


def resolve_attention_impl(impl: str, dtype, *, tensor_parallel: bool = False) -> str | None:
  """'auto' -> cuDNN on GPU for 16-bit compute (cuDNN has no float32 path), XLA otherwise.

  Inside the tensor-parallel shard_map 'auto' takes XLA: the cuDNN train step of a
  tensor-parallel Transformer died with a segmentation fault (jax 0.11.2) where the same step
  with XLA attention ran (benchmarks/RESULTS.md#lab-log, "Tensor-parallel decode and training on
  2 x H200"). An explicit 'cudnn' is kept.
  """
  if impl == "auto":
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and half and not tensor_parallel else "xla"
  if impl not in ("xla", "cudnn"):
    raise ValueError(f"model.attention_impl={impl!r}; expected 'auto', 'xla' or 'cudnn'")
  return impl


@register_mixer("attention")
class Attention(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs, causal: bool = True):
    """`causal=False`: every position attends to every position of its document (the image
    tower of lloglin.models.dual_encoder); the decode path (prefill / step) is causal only."""
    self.causal = causal
    H, G, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
    self.q_proj = dense(D, H * K, **kw)
    self.k_proj = dense(D, G * K, **kw)
    self.v_proj = dense(D, G * K, **kw)
    self.o_proj = dense(H * K, D, **kw)
    self.num_heads, self.num_kv_heads, self.head_dim = H, G, K
    self.rope_theta = cfg.rope_theta
    self.impl = resolve_attention_impl(cfg.attention_impl, cfg.compute_dtype)
    self.tensor_parallel_impl = resolve_attention_impl(cfg.attention_impl, cfg.compute_dtype,
                                                       tensor_parallel=True)

  def qkv(self, x_BTD, positions_BT):
    """Projected, RoPE-rotated queries and keys, and values (also used by the decode path)."""
    B, T, _ = x_BTD.shape
    q_BTHK = self.q_proj(x_BTD).reshape(B, T, self.num_heads, self.head_dim)
    k_BTGK = self.k_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    v_BTGK = self.v_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    q_BTHK = apply_rope(q_BTHK, positions_BT, self.rope_theta)
    k_BTGK = apply_rope(k_BTGK, positions_BT, self.rope_theta)
    return q_BTHK, k_BTGK, v_BTGK

  def __call__(self, x_BTD, *, segment_ids_BT=None, positions_BT=None):
    q_BTHK, k_BTGK, v_BTGK = self.qkv(x_BTD, positions_BT)
    return self._attend(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT)

  def _attend(self, q_BTHK, k_BTGK, v_BTGK, segment_ids_BT):
    B, T = q_BTHK.shape[:2]
    o_BTHK = causal_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=segment_ids_BT,
                              implementation=self.impl, causal=self.causal)
    o_BTHK = tag_mixer_core(o_BTHK)
    return self.o_proj(o_BTHK.reshape(B, T, self.num_heads * self.head_dim))

  def init_cache(self, batch_size: int, max_len: int, dtype) -> KVCache:
    zeros = jnp.zeros((batch_size, max_len, self.num_kv_heads, self.head_dim), dtype)
    return KVCache(zeros, zeros, jnp.zeros((batch_size,), jnp.int32))

  def prefill(self, x_BTD, cache: KVCache, lengths_B=None):
    """Attention over right-padded prompts (positions 0..T-1); their keys/values fill the cache."""
    S = cache.k_BSGK.shape[1]
    check_prefill(x_BTD, lengths_B, S)
    B, T, _ = x_BTD.shape
    segment_ids_BT = prompt_segment_ids(lengths_B, T)
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    q_BTHK, k_BTGK, v_BTGK = self.qkv(x_BTD, positions_BT)
    y_BTD = self._attend(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT)
    k_BTGK, v_BTGK = sanitize_padding(segment_ids_BT, k_BTGK, v_BTGK)
    pad = ((0, 0), (0, S - T), (0, 0), (0, 0))
    lengths_B = jnp.full((B,), T, jnp.int32) if lengths_B is None else lengths_B
    return y_BTD, KVCache(jnp.pad(k_BTGK.astype(cache.k_BSGK.dtype), pad),
                          jnp.pad(v_BTGK.astype(cache.v_BSGK.dtype), pad),
                          jnp.asarray(lengths_B, jnp.int32))

  def step(self, x_BD, cache: KVCache):
    """One token at position cache.length_B: writes its key/value there, attends to the cache.
    A row whose cache is full (length_B == max_len) drops the write."""
    B = x_BD.shape[0]
    t_B = cache.length_B
    q_B1HK, k_B1GK, v_B1GK = self.qkv(x_BD[:, None], t_B[:, None])
    o_BHK, k_BSGK, v_BSGK = write_and_attend(q_B1HK[:, 0], k_B1GK[:, 0], v_B1GK[:, 0],
                                             cache.k_BSGK, cache.v_BSGK, t_B)
    y_BD = self.o_proj(o_BHK.reshape(B, self.num_heads * self.head_dim).astype(x_BD.dtype))
    return y_BD, KVCache(k_BSGK, v_BSGK, t_B + 1)

  # Tensor parallelism (lloglin.parallel.tensor_parallel): device r of tp holds query heads
  # [r*H/tp, (r+1)*H/tp); kv heads are split when tp divides their count G, else replicated, and
  # device r reads group r // (tp/G) (attention_kv_split).

  def tp_param_axes(self, tp: int) -> dict:
    kv = "kv_heads" if attention_kv_split(self.num_heads, self.num_kv_heads, tp) else None
    return {"q_proj.kernel": ("embed", "heads"), "k_proj.kernel": ("embed", kv),
            "v_proj.kernel": ("embed", kv), "o_proj.kernel": ("heads", "embed")}

  def tp_qkv(self, x_BTD, positions_BT, *, tp: int, axis_name: str):
    """This device's RoPE-rotated queries [B, T, H/tp, K] and keys/values [B, T, G', K].

    G' = G/tp when the kv heads are split, else 1 (the group this device's query heads read).
    """
    B, T, _ = x_BTD.shape
    H, G, K = self.num_heads, self.num_kv_heads, self.head_dim
    q_BTHK = self.q_proj(x_BTD).reshape(B, T, H // tp, K)
    if attention_kv_split(H, G, tp):
      k_BTGK = self.k_proj(x_BTD).reshape(B, T, G // tp, K)
      v_BTGK = self.v_proj(x_BTD).reshape(B, T, G // tp, K)
    else:
      k_BTGK = local_group(self.k_proj(x_BTD).reshape(B, T, G, K), 2, G, tp, axis_name)
      v_BTGK = local_group(self.v_proj(x_BTD).reshape(B, T, G, K), 2, G, tp, axis_name)
    q_BTHK = apply_rope(q_BTHK, positions_BT, self.rope_theta)
    k_BTGK = apply_rope(k_BTGK, positions_BT, self.rope_theta)
    return q_BTHK, k_BTGK, v_BTGK

  def tp_call(self, x_BTD, *, tp: int, axis_name: str, segment_ids_BT=None, positions_BT=None):
    """This device's partial output: its heads' attention through the row-parallel o_proj."""
    B, T, _ = x_BTD.shape
    q_BTHK, k_BTGK, v_BTGK = self.tp_qkv(x_BTD, positions_BT, tp=tp, axis_name=axis_name)
    o_BTHK = causal_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=segment_ids_BT,
                              implementation=self.tensor_parallel_impl, causal=self.causal)
    return self.o_proj(o_BTHK.reshape(B, T, -1))


def attention_kv_split(num_heads: int, num_kv_heads: int, tp: int,
                       mixer: str = "attention") -> bool:
  """True when the kv heads are split over tp; False when they are replicated (tp % G == 0)."""
  return groups_split(mixer, "model.num_heads", num_heads, "model.num_kv_heads", num_kv_heads,
                      tp)


def write_and_attend(q_BHK, k_BGK, v_BGK, k_cache_BSGK, v_cache_BSGK, t_B):
  """One decode token at position t_B: writes its key/value into the caches (dropped where
  t_B >= S, a full cache) and attends over positions <= t_B. Returns (o_BHK, k cache, v cache)."""
  rows_B = jnp.arange(q_BHK.shape[0])
  k_cache_BSGK = k_cache_BSGK.at[rows_B, t_B].set(k_BGK.astype(k_cache_BSGK.dtype), mode="drop")
  v_cache_BSGK = v_cache_BSGK.at[rows_B, t_B].set(v_BGK.astype(v_cache_BSGK.dtype), mode="drop")
  o_BHK = attention_step(q_BHK, k_cache_BSGK, v_cache_BSGK, t_B + 1)
  return o_BHK, k_cache_BSGK, v_cache_BSGK
