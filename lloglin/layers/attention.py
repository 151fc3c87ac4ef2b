"""Causal softmax attention with RoPE and grouped-query heads (the Transformer baseline mixer)."""

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.linear import dense
from lloglin.layers.registry import register_mixer
from lloglin.ops.attention import apply_rope, causal_attention


def resolve_attention_impl(impl: str, dtype) -> str | None:
  """'auto' -> cuDNN on GPU for 16-bit compute (cuDNN has no float32 path), XLA otherwise."""
  if impl == "auto":
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and half else "xla"
  if impl not in ("xla", "cudnn"):
    raise ValueError(f"model.attention_impl={impl!r}; expected 'auto', 'xla' or 'cudnn'")
  return impl


@register_mixer("attention")
class Attention(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    H, G, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
    self.q_proj = dense(D, H * K, **kw)
    self.k_proj = dense(D, G * K, **kw)
    self.v_proj = dense(D, G * K, **kw)
    self.o_proj = dense(H * K, D, **kw)
    self.num_heads, self.num_kv_heads, self.head_dim = H, G, K
    self.rope_theta = cfg.rope_theta
    self.impl = resolve_attention_impl(cfg.attention_impl, cfg.compute_dtype)

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
    B, T, _ = x_BTD.shape
    q_BTHK, k_BTGK, v_BTGK = self.qkv(x_BTD, positions_BT)
    o_BTHK = causal_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT=segment_ids_BT,
                              implementation=self.impl)
    return self.o_proj(o_BTHK.reshape(B, T, self.num_heads * self.head_dim))
