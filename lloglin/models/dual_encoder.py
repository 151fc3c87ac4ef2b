"""A CLIP-style dual encoder: a ViT image tower and a text tower of lloglin's decoder blocks.

Image tower: pixels in [0, 1] are mapped to [-1, 1], cut into non-overlapping patch_size x
patch_size patches (reshape + one linear map), given learned position embeddings (and a learned
class token first when pooling is "cls"), run through pre-norm blocks of bidirectional attention
(lloglin's Attention with causal=False; every position reads every other) and a SwiGLU MLP, final
RMSNorm, pooled (the class token's state, or the mean over patches) and projected to embed_dim.
The blocks read position 0 everywhere, so the attention layer's RoPE is the identity there: the
learned embeddings alone carry the patch positions, as in ViT.

Text tower: a DecoderLM built tied (so it has no LM head: its parameter paths are the LM's under
`text/`, and an LM export initialises it through `init_from`), any `layer_pattern` (attention,
gdn, loglinear_gdn, mamba2, path, ...), run causally over right-padded rows. Row b holds
lengths[b] tokens; the last of them, at position lengths[b] - 1, is the end-of-text token (the
data appends the tokenizer's EOS there: lloglin.data.contrastive), and its final-normed hidden
state, projected to embed_dim, is the row's feature, as CLIP reads its EOT token. Positions
from lengths[b] on are padding (segment id 0); the tower is causal, so whatever they hold never
changes the embedding.

Both embeddings are L2-normalised. The similarity logits are scale * cos(image, text), with
scale = exp(logit_scale), logit_scale learned from CLIP's init log(1 / 0.07) and the scale
clamped at 100 (CLIP clamps the parameter after each step; here the forward clamps it, so that
the gradient is zero above the clamp and the parameter itself is left to the optimizer).
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.attention import Attention
from lloglin.layers.linear import dense
from lloglin.layers.mlp import SwiGLU
from lloglin.layers.norms import RMSNorm
from lloglin.models.config import ModelConfig
from lloglin.models.decoder import DecoderLM

POOLINGS = ("cls", "mean")
LOGIT_SCALE_INIT = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
  """Sizes and choices of a dual encoder: `text` is the text tower's ModelConfig (its vocab_size,
  d_model, layers, layer_pattern...), the other fields the image tower's and the shared
  embedding's. `encoder_fields()` names the latter (the `contrastive.encoder` config section)."""
  text: ModelConfig
  image_size: int = 32
  patch_size: int = 8
  channels: int = 3
  vision_width: int = 64
  vision_depth: int = 2
  vision_heads: int = 2
  vision_mlp_dim: int = 128
  pooling: str = "cls"  # cls | mean
  embed_dim: int = 64

  def __post_init__(self):
    if not isinstance(self.text, ModelConfig):
      raise TypeError(f"text: expected a ModelConfig, got {type(self.text).__name__}")
    for name in self.encoder_fields():
      value = getattr(self, name)
      if name != "pooling" and (isinstance(value, bool) or not isinstance(value, int)
                                or value <= 0):
        raise ValueError(f"encoder.{name}={value!r}; expected a positive int")
    if self.image_size % self.patch_size:
      raise ValueError(f"encoder.patch_size={self.patch_size} must divide "
                       f"encoder.image_size={self.image_size}")
    if self.vision_width % self.vision_heads:
      raise ValueError(f"encoder.vision_heads={self.vision_heads} must divide "
                       f"encoder.vision_width={self.vision_width}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"encoder.pooling={self.pooling!r}; expected one of {POOLINGS}")

  @staticmethod
  def encoder_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(DualEncoderConfig) if f.name != "text")

  @classmethod
  def from_dicts(cls, text: Mapping[str, Any] | ModelConfig,
                 encoder: Mapping[str, Any]) -> "DualEncoderConfig":
    """From the text tower's model section and the encoder section, naming unknown keys."""
    encoder = dict(encoder)
    unknown = sorted(set(encoder) - set(cls.encoder_fields()))
    if unknown:
      raise ValueError(f"unknown encoder config key(s) {unknown}; valid keys: "
                       f"{sorted(cls.encoder_fields())}")
    if not isinstance(text, ModelConfig):
      text = ModelConfig.from_dict(text)
    return cls(text=text, **encoder)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  def vision_model_config(self) -> ModelConfig:
    """The image tower's blocks as a ModelConfig (the attention and MLP layers read one); dtypes,
    norm eps and attention implementation follow the text tower's."""
    t = self.text
    return ModelConfig(vocab_size=1, d_model=self.vision_width, num_layers=self.vision_depth,
                       num_heads=self.vision_heads, num_kv_heads=self.vision_heads,
                       head_dim=self.vision_width // self.vision_heads,
                       mlp_dim=self.vision_mlp_dim, max_seq_len=self.num_patches + 1,
                       norm_eps=t.norm_eps, dtype=t.dtype, param_dtype=t.param_dtype,
                       attention_impl=t.attention_impl)


class VisionBlock(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)) (bidirectional), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
    self.attn = Attention(cfg, rngs=rngs, causal=False)
    self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
    self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, dtype=cfg.compute_dtype,
                      param_dtype=cfg.weight_dtype, rngs=rngs)

  def __call__(self, x_BND, positions_BN):
    x_BND = x_BND + self.attn(self.attn_norm(x_BND), positions_BT=positions_BN)
    return x_BND + self.mlp(self.mlp_norm(x_BND))


def l2_normalize(x_BD):
  """Rows scaled to unit L2 norm, in float32 or wider (a zero row stays zero)."""
  x_BD = x_BD.astype(jnp.promote_types(x_BD.dtype, jnp.float32))
  return x_BD * jax.lax.rsqrt(jnp.maximum(jnp.sum(x_BD * x_BD, axis=-1, keepdims=True), 1e-24))


class DualEncoder(nnx.Module):

  def __init__(self, cfg: DualEncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    vcfg = cfg.vision_model_config()
    W, P, C = cfg.vision_width, cfg.patch_size, cfg.channels
    kw = dict(dtype=vcfg.compute_dtype, param_dtype=vcfg.weight_dtype, rngs=rngs)
    self.patch_embed = dense(P * P * C, W, use_bias=True, **kw)
    tokens = cfg.num_patches + (cfg.pooling == "cls")
    init = nnx.initializers.normal(stddev=0.02)
    self.pos_embed = nnx.Param(init(rngs.params(), (tokens, W), vcfg.weight_dtype))
    self.cls_token = (nnx.Param(init(rngs.params(), (W,), vcfg.weight_dtype))
                      if cfg.pooling == "cls" else None)
    self.vision_blocks = nnx.List([VisionBlock(vcfg, rngs=rngs) for _ in range(cfg.vision_depth)])
    self.vision_norm = RMSNorm(W, eps=vcfg.norm_eps, param_dtype=vcfg.weight_dtype)
    self.image_proj = dense(W, cfg.embed_dim, **kw)
    t = cfg.text
    self.text = DecoderLM(dataclasses.replace(t, tie_embeddings=True), rngs=rngs)
    self.text_proj = dense(t.d_model, cfg.embed_dim, dtype=t.compute_dtype,
                           param_dtype=t.weight_dtype, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(LOGIT_SCALE_INIT, jnp.float32))

  def encode_image(self, images_BHWC):
    """Unit-norm image embeddings [B, embed_dim] (float32) of images [B, S, S, C] in [0, 1]."""
    cfg = self.cfg
    S, P, C = cfg.image_size, cfg.patch_size, cfg.channels
    shape = tuple(jnp.shape(images_BHWC))
    if len(shape) != 4 or shape[1:] != (S, S, C):
      raise ValueError(f"images: expected shape [B, {S}, {S}, {C}] (encoder.image_size={S}, "
                       f"encoder.channels={C}), got {shape}")
    if not jnp.issubdtype(jnp.asarray(images_BHWC).dtype, jnp.floating):
      raise ValueError(f"images: expected floating values in [0, 1], got dtype "
                       f"{jnp.asarray(images_BHWC).dtype}")
    B, n = shape[0], S // P
    x = 2 * jnp.asarray(images_BHWC, self.patch_embed.kernel.dtype) - 1
    x_BNF = x.reshape(B, n, P, n, P, C).transpose(0, 1, 3, 2, 4, 5).reshape(B, n * n, P * P * C)
    x_BND = self.patch_embed(x_BNF)
    if self.cls_token is not None:
      cls_B1D = jnp.broadcast_to(self.cls_token[...].astype(x_BND.dtype), (B, 1, x_BND.shape[-1]))
      x_BND = jnp.concatenate([cls_B1D, x_BND], axis=1)
    x_BND = x_BND + self.pos_embed[...].astype(x_BND.dtype)
    positions_BN = jnp.zeros(x_BND.shape[:2], jnp.int32)  # RoPE off: learned positions only
    for block in self.vision_blocks:
      x_BND = block(x_BND, positions_BN)
    x_BND = self.vision_norm(x_BND)
    pooled_BD = x_BND[:, 0] if self.cls_token is not None else x_BND.mean(axis=1)
    return l2_normalize(self.image_proj(pooled_BD))

  def encode_text(self, tokens_BL, lengths_B):
    """Unit-norm text embeddings [B, embed_dim] (float32) of right-padded rows tokens [B, L]
    (int) holding lengths[b] tokens each, the last of them the end-of-text token (the module
    docstring); lengths in [1, L]."""
    tokens_BL, lengths_B = check_text(tokens_BL, lengths_B)
    B, L = tokens_BL.shape
    segment_ids_BL = (jnp.arange(L, dtype=jnp.int32) < lengths_B[:, None]).astype(jnp.int32)
    h_BLD = self.text.hidden(tokens_BL, segment_ids_BT=segment_ids_BL)
    eot_BD = h_BLD[jnp.arange(B), lengths_B - 1]
    return l2_normalize(self.text_proj(eot_BD))

  def scale(self):
    """The similarity scale exp(logit_scale), clamped at 100 (float32)."""
    return jnp.exp(jnp.minimum(self.logit_scale[...].astype(jnp.float32), MAX_LOGIT_SCALE))

  def __call__(self, images_BHWC, tokens_BL, lengths_B):
    """Similarity logits [B_img, B_txt] (float32): scale * cos(image i, text j)."""
    return similarity_logits(self.scale(), self.encode_image(images_BHWC),
                             self.encode_text(tokens_BL, lengths_B))


def similarity_logits(scale, images_ID, texts_TD):
  """scale * images @ texts.T: [I, T] scaled cosine similarities of unit-norm embeddings."""
  return scale * jnp.einsum("id,td->it", images_ID, texts_TD, precision=jax.lax.Precision.HIGHEST)


def check_text(tokens_BL, lengths_B):
  """(tokens, lengths) as int32 arrays, or a ValueError naming the argument: tokens [B, L] of
  integers, lengths [B] of integers in [1, L] (their values are checked where they are known,
  outside jit)."""
  tokens_BL, lengths_B = jnp.asarray(tokens_BL), jnp.asarray(lengths_B)
  if tokens_BL.ndim != 2 or not jnp.issubdtype(tokens_BL.dtype, jnp.integer):
    raise ValueError(f"tokens: expected integer token ids of shape [B, L], got {tokens_BL.dtype} "
                     f"of shape {tokens_BL.shape}")
  B, L = tokens_BL.shape
  if lengths_B.shape != (B,) or not jnp.issubdtype(lengths_B.dtype, jnp.integer):
    raise ValueError(f"lengths: expected integer lengths of shape [B={B}] (one per row of "
                     f"tokens), got {lengths_B.dtype} of shape {lengths_B.shape}")
  if not isinstance(lengths_B, jax.core.Tracer) and B:
    low, high = int(lengths_B.min()), int(lengths_B.max())
    if low < 1 or high > L:
      bad = low if low < 1 else high
      raise ValueError(f"lengths: value {bad} is out of range; expected 1 <= length <= L={L} "
                       "(each row holds at least its end-of-text token)")
  return tokens_BL.astype(jnp.int32), lengths_B.astype(jnp.int32)


def build_dual_encoder(text: ModelConfig, *, seed: int = 0, **encoder) -> DualEncoder:
  """A randomly initialised DualEncoder: the text tower of `text`, the image tower and embedding
  of the `encoder` fields (DualEncoderConfig.encoder_fields())."""
  return DualEncoder(DualEncoderConfig.from_dicts(text, encoder), rngs=nnx.Rngs(params=seed))
