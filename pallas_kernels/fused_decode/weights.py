"""Weights of a Llama-style decoder packed for batch-1 decoding, and its KV cache.

Every matrix is stored with output channels as rows ("[N, Din]", the transpose of flax's
kernels) and stacked over layers, so a GEMV tile is a run of contiguous rows and one kernel can
index any layer. The o-projection keeps its input split by head ([L, D, H, K]) so it can read
the attention output [H, K] without a reshape. 'int8' stores symmetric per-output-channel
quantised rows with float32 scales (w = q * scale); 'bf16' and 'f32' store plain rows.

Activation dtype: every vector entering a matrix product is rounded to `act_dtype` (bf16 for the
'bf16' and 'int8' formats, f32 for 'f32'); products and sums are float32; the residual stream is
float32. The kernel and `decode_step_reference` share this rule exactly.
"""

import dataclasses

import jax
import jax.numpy as jnp

FORMATS = ("f32", "bf16", "int8")


@dataclasses.dataclass(frozen=True)
class FusedConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  weight_format: str = "bf16"

  def __post_init__(self):
    if self.weight_format not in FORMATS:
      raise ValueError(f"weight_format={self.weight_format!r}; expected one of {FORMATS}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim}; expected an even head dim (RoPE)")

  @property
  def act_dtype(self):
    return jnp.float32 if self.weight_format == "f32" else jnp.bfloat16

  @property
  def cache_dtype(self):
    return self.act_dtype

  @property
  def qkv_rows(self) -> int:
    return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

  def rope_inv_freq(self) -> jax.Array:
    """[head_dim / 2] float32 RoPE frequencies (rotate-half, as lloglin.ops.attention)."""
    K = self.head_dim
    return self.rope_theta ** (-jnp.arange(K // 2, dtype=jnp.float32) * 2 / K)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FusedWeights:
  """Packed weights (see the module docstring). `s*` are per-row float32 scales (int8 only,
  else None); `head`/`shead` are None when the model ties the head to the embedding."""
  embed: jax.Array      # [V, D]
  sembed: jax.Array | None
  attn_norm: jax.Array  # [L, D] f32
  wqkv: jax.Array       # [L, (H + 2G) K, D]: q heads, then k groups, then v groups
  sqkv: jax.Array | None
  wo: jax.Array         # [L, D, H, K]
  so: jax.Array | None
  mlp_norm: jax.Array   # [L, D] f32
  wgate: jax.Array      # [L, F, D]
  sgate: jax.Array | None
  wup: jax.Array        # [L, F, D]
  sup: jax.Array | None
  wdown: jax.Array      # [L, D, F]
  sdown: jax.Array | None
  final_norm: jax.Array  # [D] f32
  head: jax.Array | None  # [V, D]
  shead: jax.Array | None
  config: FusedConfig = dataclasses.field(metadata=dict(static=True))

  def lm_head(self):
    """(rows [V, D], scales or None) of the LM head: the embedding's when tied."""
    return (self.embed, self.sembed) if self.head is None else (self.head, self.shead)

  def nbytes(self) -> int:
    """Bytes one decode step must read: every array once, except an untied embedding table,
    of which only the token's row is read."""
    total = 0
    for f in dataclasses.fields(self):
      x = getattr(self, f.name)
      if isinstance(x, jax.Array) and not (self.head is not None and f.name in ("embed",
                                                                                 "sembed")):
        total += x.size * x.dtype.itemsize
    return total + (self.config.d_model * self.embed.dtype.itemsize if self.head is not None
                    else 0)


def quantize_rows(w_ND, weight_format: str):
  """(rows, scales or None): int8 rows with scale max|w|/127 per row, or a plain cast."""
  if weight_format == "f32":
    return w_ND.astype(jnp.float32), None
  if weight_format == "bf16":
    return w_ND.astype(jnp.bfloat16), None
  if weight_format != "int8":
    raise ValueError(f"weight_format={weight_format!r}; expected one of {FORMATS}")
  w32 = w_ND.astype(jnp.float32)
  amax = jnp.max(jnp.abs(w32), axis=-1)
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)
  q = jnp.clip(jnp.round(w32 / scale[..., None]), -127, 127).astype(jnp.int8)
  return q, scale


def dequantize(w, scale):
  """Float32 rows: w * scale per row (scale None: a plain cast)."""
  w32 = w.astype(jnp.float32)
  return w32 if scale is None else w32 * scale[..., None]


def pack_arrays(config: FusedConfig, *, embed_VD, attn_norm_LD, wq_LDN, wk_LDN, wv_LDN, wo_LND,
                mlp_norm_LD, wgate_LDF, wup_LDF, wdown_LFD, final_norm_D,
                head_DV=None) -> FusedWeights:
  """Packs flax-layout ([in, out]) float arrays stacked over layers; head_DV None = tied."""
  c = config
  L, D, H, K = c.num_layers, c.d_model, c.num_heads, c.head_dim
  q = lambda w: quantize_rows(w, c.weight_format)
  t = lambda w: jnp.swapaxes(w, -1, -2)
  embed, sembed = q(embed_VD)
  wqkv, sqkv = q(t(jnp.concatenate([wq_LDN, wk_LDN, wv_LDN], axis=-1)))
  wo, so = q(t(wo_LND).reshape(L, D, H * K))
  wo = wo.reshape(L, D, H, K)
  wgate, sgate = q(t(wgate_LDF))
  wup, sup = q(t(wup_LDF))
  wdown, sdown = q(t(wdown_LFD))
  head, shead = (None, None) if head_DV is None else q(t(head_DV))
  f32 = lambda x: x.astype(jnp.float32)
  return FusedWeights(embed=embed, sembed=sembed, attn_norm=f32(attn_norm_LD), wqkv=wqkv,
                      sqkv=sqkv, wo=wo, so=so, mlp_norm=f32(mlp_norm_LD), wgate=wgate,
                      sgate=sgate, wup=wup, sup=sup, wdown=wdown, sdown=sdown,
                      final_norm=f32(final_norm_D), head=head, shead=shead, config=c)


def random_weights(config: FusedConfig, key, *, tied: bool = True) -> FusedWeights:
  """Random weights of Llama-like scale (for benchmarks and tests; speed ignores values)."""
  c = config
  L, D, H, G, K, F, V = (c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim,
                         c.mlp_dim, c.vocab_size)
  ks = iter(jax.random.split(key, 12))
  n = lambda shape, fan_in: jax.random.normal(next(ks), shape, jnp.float32) * fan_in**-0.5
  norm = lambda shape: 1.0 + 0.1 * jax.random.normal(next(ks), shape, jnp.float32)
  return pack_arrays(
      c, embed_VD=jax.random.normal(next(ks), (V, D)), attn_norm_LD=norm((L, D)),
      wq_LDN=n((L, D, H * K), D), wk_LDN=n((L, D, G * K), D), wv_LDN=n((L, D, G * K), D),
      wo_LND=n((L, H * K, D), H * K), mlp_norm_LD=norm((L, D)), wgate_LDF=n((L, D, F), D),
      wup_LDF=n((L, D, F), D), wdown_LFD=n((L, F, D), F), final_norm_D=norm((D,)),
      head_DV=None if tied else n((D, V), D))


def init_cache(config: FusedConfig, max_len: int):
  """Zero KV cache (k, v), each [L, S, G, K] in the cache dtype (lloglin's layout, no batch)."""
  shape = (config.num_layers, max_len, config.num_kv_heads, config.head_dim)
  return (jnp.zeros(shape, config.cache_dtype), jnp.zeros(shape, config.cache_dtype))
