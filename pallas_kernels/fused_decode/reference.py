"""The unfused decode step in plain jnp: the kernel's oracle and the "plain jitted step" baseline.

It computes exactly what the fused kernel computes (weights.py: activations rounded to the
activation dtype before each matrix product, float32 products and sums, float32 residual, RoPE
and attention from lloglin.ops), with layers under one `lax.fori_loop` and the cache updated in
place, so jitted it is also a fair XLA baseline.
"""

import jax
import jax.numpy as jnp

from lloglin.ops.attention import apply_rope, attention_step
from pallas_kernels.fused_decode.weights import FusedWeights


def _rms_normed(x_D, scale_D, eps, act_dtype):
  x_D = x_D * jax.lax.rsqrt(jnp.mean(x_D * x_D) + eps) * scale_D
  return x_D.astype(act_dtype)


def _matvec(w_ND, s_N, x_D):
  """w @ x with float32 products and sums; int8 rows are exact in bf16, then scaled per row."""
  w_ND = w_ND.astype(x_D.dtype)
  y_N = jnp.einsum("nd,d->n", w_ND, x_D, preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST)
  return y_N if s_N is None else y_N * s_N


def _layer_weights(w: FusedWeights, l):
  names = ("attn_norm", "wqkv", "sqkv", "wo", "so", "mlp_norm", "wgate", "sgate", "wup", "sup",
           "wdown", "sdown")
  return {n: None if getattr(w, n) is None else getattr(w, n)[l] for n in names}


def decode_step_reference(weights: FusedWeights, cache, token, position):
  """Logits [V] (float32) for `token` at `position` (the cache holds positions < position), and
  the cache (k, v: [L, S, G, K]) with this token's keys/values written at `position`."""
  c = weights.config
  H, G, K, D = c.num_heads, c.num_kv_heads, c.head_dim, c.d_model
  act = c.act_dtype
  token = jnp.asarray(token, jnp.int32)
  position = jnp.asarray(position, jnp.int32)
  x_D = weights.embed[token].astype(jnp.float32)
  if weights.sembed is not None:
    x_D = x_D * weights.sembed[token]
  pos_11 = position.reshape(1, 1)

  def layer(l, carry):
    x_D, k_LSGK, v_LSGK = carry
    lw = _layer_weights(weights, l)
    xn_D = _rms_normed(x_D, lw["attn_norm"], c.norm_eps, act)
    qkv_N = _matvec(lw["wqkv"], lw["sqkv"], xn_D).reshape(H + 2 * G, K)
    q_HK = apply_rope(qkv_N[None, None, :H], pos_11, c.rope_theta)[0, 0]
    k_GK = apply_rope(qkv_N[None, None, H:H + G], pos_11, c.rope_theta)[0, 0]
    v_GK = qkv_N[H + G:]
    k_LSGK = jax.lax.dynamic_update_slice(k_LSGK, k_GK.astype(k_LSGK.dtype)[None, None],
                                          (l, position, 0, 0))
    v_LSGK = jax.lax.dynamic_update_slice(v_LSGK, v_GK.astype(v_LSGK.dtype)[None, None],
                                          (l, position, 0, 0))
    o_HK = attention_step(q_HK[None], k_LSGK[l][None], v_LSGK[l][None], (position + 1)[None])[0]
    x_D = x_D + _matvec(lw["wo"].reshape(D, H * K), lw["so"], o_HK.reshape(-1).astype(act))
    xn_D = _rms_normed(x_D, lw["mlp_norm"], c.norm_eps, act)
    g_F = _matvec(lw["wgate"], lw["sgate"], xn_D)
    u_F = _matvec(lw["wup"], lw["sup"], xn_D)
    h_F = (g_F * jax.nn.sigmoid(g_F) * u_F).astype(act)
    x_D = x_D + _matvec(lw["wdown"], lw["sdown"], h_F)
    return x_D, k_LSGK, v_LSGK

  x_D, k, v = jax.lax.fori_loop(0, c.num_layers, layer, (x_D, *cache))
  xn_D = _rms_normed(x_D, weights.final_norm, c.norm_eps, act)
  return _matvec(*weights.lm_head(), xn_D), (k, v)
