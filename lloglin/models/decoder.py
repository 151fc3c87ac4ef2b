"""Decoder-only LM: embedding, pre-norm blocks (mixer + SwiGLU), final norm, tied or untied head."""

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers import make_mixer
from lloglin.layers.linear import dense
from lloglin.layers.mlp import SwiGLU
from lloglin.layers.norms import RMSNorm
from lloglin.models.config import ModelConfig


class Block(nnx.Module):
  """x + mixer(norm(x)), then x + mlp(norm(x)) (no MLP when cfg.mlp_dim == 0)."""

  def __init__(self, cfg: ModelConfig, mixer: str, *, rngs: nnx.Rngs):
    self.mixer_name = mixer
    self.mixer_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
    self.mixer = make_mixer(mixer, cfg, rngs=rngs)
    if cfg.mlp_dim:
      self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
      self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, dtype=cfg.compute_dtype,
                        param_dtype=cfg.weight_dtype, rngs=rngs)
    else:
      self.mlp = None

  def __call__(self, x_BTD, *, segment_ids_BT, positions_BT):
    x_BTD = x_BTD + self.mixer(self.mixer_norm(x_BTD), segment_ids_BT=segment_ids_BT,
                               positions_BT=positions_BT)
    if self.mlp is not None:
      x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
    return x_BTD


class DecoderLM(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                           param_dtype=cfg.weight_dtype,
                           embedding_init=nnx.initializers.normal(stddev=0.02), rngs=rngs)
    self.blocks = nnx.List([Block(cfg, name, rngs=rngs) for name in cfg.mixers])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
    if cfg.tie_embeddings:
      self.head = None
    else:
      self.head = dense(cfg.d_model, cfg.vocab_size, dtype=cfg.compute_dtype,
                        param_dtype=cfg.weight_dtype, rngs=rngs)

  def hidden(self, tokens_BT, *, segment_ids_BT=None, positions_BT=None):
    """Final-normed hidden states [B, T, D]."""
    B, T = tokens_BT.shape
    if T > self.cfg.max_seq_len:
      raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.cfg.max_seq_len}")
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x_BTD = self.embed(tokens_BT)
    for block in self.blocks:
      x_BTD = block(x_BTD, segment_ids_BT=segment_ids_BT, positions_BT=positions_BT)
    return self.final_norm(x_BTD)

  def logits(self, h_BTD):
    """Vocabulary logits in float32 from hidden states."""
    if self.head is None:
      return self.embed.attend(h_BTD).astype(jnp.float32)
    return self.head(h_BTD).astype(jnp.float32)

  def __call__(self, tokens_BT, *, segment_ids_BT=None, positions_BT=None):
    """Logits [B, T, vocab] (float32)."""
    return self.logits(self.hidden(tokens_BT, segment_ids_BT=segment_ids_BT,
                                   positions_BT=positions_BT))


def build_model(cfg: ModelConfig, *, seed: int = 0) -> DecoderLM:
  return DecoderLM(cfg, rngs=nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
