"""Sequence-scoring reward model: the decoder trunk and a scalar head.

The trunk is a DecoderLM (embedding, blocks of any `layer_pattern`, final norm) without an LM
head: it is built tied, so it holds no head parameter, and `model.tie_embeddings` has no effect
here. Its parameter paths are the DecoderLM's under `trunk/`, so an LM export initialises it
directly (lloglin.training.tasks.init_from_export). The reward head (`head`, d_model -> 1 with
a bias; named like the LM head, so the low-rank optimizers' default mask leaves it whole) maps
the final hidden state at the last non-padding token of each row to one number.

Padding convention: rows are right-padded, and padding is where `segment_ids_BT == 0` (any
non-zero id is a token of the sequence). The reward is read at the last position whose id is
non-zero; the trunk is causal, so padding (and whatever tokens it holds) after that position
never changes the reward. A row with no token at all reads position 0.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from lloglin.layers.linear import dense
from lloglin.models.config import ModelConfig
from lloglin.models.decoder import DecoderLM


def last_token_index(segment_ids_BT):
  """[B] int32: the last position of each row whose segment id is non-zero (0 if none)."""
  T = segment_ids_BT.shape[1]
  return jnp.max(jnp.where(segment_ids_BT != 0, jnp.arange(T, dtype=jnp.int32), 0), axis=1)


class RewardModel(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.trunk = DecoderLM(dataclasses.replace(cfg, tie_embeddings=True), rngs=rngs)
    self.head = dense(cfg.d_model, 1, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                       use_bias=True, rngs=rngs)

  def __call__(self, tokens_BT, *, segment_ids_BT=None, positions_BT=None):
    """Rewards [B] (float32) of right-padded rows; segment_ids_BT None means no padding."""
    B, T = tokens_BT.shape
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones((B, T), jnp.int32)
    h_BTD = self.trunk.hidden(tokens_BT, segment_ids_BT=segment_ids_BT,
                              positions_BT=positions_BT)
    h_BD = h_BTD[jnp.arange(B), last_token_index(segment_ids_BT)]
    return self.head(h_BD)[:, 0].astype(jnp.float32)


def build_reward_model(cfg: ModelConfig, *, seed: int = 0) -> RewardModel:
  return RewardModel(cfg, rngs=nnx.Rngs(params=seed))
