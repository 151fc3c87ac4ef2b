"""Decoder-only LM: embedding, pre-norm blocks (mixer + SwiGLU), final norm, tied or untied head.

The blocks are joined by `cfg.residual_mode` (standard | ladder | parallel | desync; see
lloglin.parallel.ladder). Under a mesh with a `tensor` axis larger than 1 (set by
`jax.set_mesh`, as the trainer does) the block stack runs tensor-parallel inside one shard_map
(lloglin.parallel.tensor_parallel); otherwise it runs as plain code that XLA may shard by the
input shardings (data parallelism, FSDP). Every residual mode has the same parameters, so a
checkpoint trained in one mode loads into another (`with_residual_mode`).
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers import make_mixer
from lloglin.layers.linear import dense
from lloglin.layers.mlp import SwiGLU
from lloglin.layers.norms import RMSNorm
from lloglin.models.config import ModelConfig
from lloglin.parallel import ladder, mesh as mesh_lib, sharding, tensor_parallel


class Block(nnx.Module):
  """A mixer and a SwiGLU MLP (none when cfg.mlp_dim == 0), each behind its own RMSNorm; how
  their outputs join the residual stream is the residual mode's business (`run_blocks`)."""

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

  def modules(self, *, segment_ids_BT, positions_BT, tp: int = 1, axis_name=None):
    """The block's residual branches as functions x_BTD -> (partial, when tp > 1) output."""
    call = partial(tensor_parallel.module_call, tp=tp, axis_name=axis_name)
    out = [lambda x: call(self.mixer, self.mixer_norm(x), segment_ids_BT=segment_ids_BT,
                          positions_BT=positions_BT)]
    if self.mlp is not None:
      out.append(lambda x: call(self.mlp, self.mlp_norm(x)))
    return out


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
    x_BTD = sharding.constrain_batch(self.embed(tokens_BT))
    tp = mesh_lib.tensor_size()
    if tp == 1:
      x_BTD = run_blocks(self.cfg, self.blocks, x_BTD, segment_ids_BT, positions_BT)
    else:
      x_BTD = tensor_parallel.shard_map_modules(
          self.blocks, partial(run_blocks, self.cfg, tp=tp), x_BTD, segment_ids_BT,
          positions_BT, tp=tp)
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


def run_blocks(cfg: ModelConfig, blocks, x_BTD, segment_ids_BT, positions_BT, *, tp: int = 1,
               axis_name: str = tensor_parallel.AXIS):
  """The residual stream through every block, wired by cfg.residual_mode.

  With tp > 1 this runs on one device inside shard_map: the blocks hold their local shards and
  each module's partial output is completed by a psum over `axis_name`.
  """
  layers = [(w, b.modules(segment_ids_BT=segment_ids_BT, positions_BT=positions_BT, tp=tp,
                          axis_name=axis_name))
            for w, b in zip(ladder.config_wirings(cfg), blocks)]
  reduce = (lambda y: jax.lax.psum(y, axis_name)) if tp > 1 else (lambda y: y)
  return ladder.residual_stack(x_BTD, layers, reduce=reduce, tp=tp)


def with_residual_mode(model: DecoderLM, residual_mode: str, *, start_layer: int = 0,
                       **options) -> DecoderLM:
  """The same parameters rewired: e.g. layers >= k of a trained standard model made ladder layers
  (`with_residual_mode(model, "ladder", start_layer=k)`, the paper's hybrid adaptation).

  `options` may set desync_every / desync_reduce. The parameters are shared, not copied.
  """
  cfg = dataclasses.replace(model.cfg, residual_mode=residual_mode,
                            residual_start_layer=start_layer, **options)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.state(model))


def build_model(cfg: ModelConfig, *, seed: int = 0) -> DecoderLM:
  return DecoderLM(cfg, rngs=nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
