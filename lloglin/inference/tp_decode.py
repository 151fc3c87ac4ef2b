"""KV-cache decoding of attention-only decoders under tensor parallelism, in every residual mode.

The caches are split by kv heads like the key/value projections: a layer's cache is
`k, v: [B, S, Gc, K]` with Gc = G when tp divides the kv-head count G (device r holds groups
[r*G/tp, (r+1)*G/tp)), and Gc = tp when the kv heads are replicated (device r holds the one
group its query heads read; neighbours may hold copies). `decode_step` runs the block stack
inside the same shard_map as training, with the same residual wiring (ladder: each layer's
all-reduces are consumed one module later), so the benchmark measures exactly the trained model.

This is the simple path for the benchmark and tests: one token per step for every row, full
attention over the cache buffer with a length mask; not the fused decode of fused.py.
"""

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lloglin.layers.attention import Attention, attention_kv_split, write_and_attend
from lloglin.models import ladder
from lloglin.models.decoder import build_model
from lloglin.parallel import sharding, tensor_parallel
from lloglin.parallel.mesh import axis_size, tensor_size

AXIS = tensor_parallel.AXIS


def cache_heads(cfg, tp: int) -> int:
  """Gc: the kv-head axis of the global cache (see the module docstring)."""
  split = attention_kv_split(cfg.num_heads, cfg.num_kv_heads, tp)
  return cfg.num_kv_heads if split else tp


def _check_attention_only(cfg):
  if set(cfg.mixers) != {"attention"}:
    raise ValueError(f"tensor-parallel KV-cache decoding supports attention-only models; "
                     f"model.layer_pattern={cfg.layer_pattern!r}")


def init_cache(cfg, batch_size: int, max_len: int, *, mesh=None, dtype=None):
  """Zero caches [(k, v)] per layer, each [B, max_len, Gc, K], split over `tensor` on Gc."""
  _check_attention_only(cfg)
  tp = axis_size(mesh, "tensor")
  shape = (batch_size, max_len, cache_heads(cfg, tp), cfg.head_dim)
  dtype = cfg.compute_dtype if dtype is None else dtype
  make = partial(jnp.zeros, shape, dtype)
  if mesh is not None:
    make = jax.jit(make, out_shardings=NamedSharding(mesh, cache_spec(mesh, batch_size)))
  return [(make(), make()) for _ in range(cfg.num_layers)]


def cache_spec(mesh, batch_size: int) -> P:
  return P(sharding.batch_axes(mesh, batch_size), None, AXIS if axis_size(mesh, AXIS) > 1
           else None, None)


def _attention_decode(attn: Attention, x_B1D, cache, pos_B, *, tp: int):
  """One token of attention for each row at position pos_B, writing its key/value into the
  (local) cache; returns (partial output [B, 1, D], new cache)."""
  B = x_B1D.shape[0]
  q_B1HK, k_B1GK, v_B1GK = attn.tp_qkv(x_B1D, pos_B[:, None], tp=tp, axis_name=AXIS)
  o_BHK, k_BSGK, v_BSGK = write_and_attend(q_B1HK[:, 0], k_B1GK[:, 0], v_B1GK[:, 0], *cache,
                                           pos_B)
  return attn.o_proj(o_BHK.reshape(B, 1, -1).astype(x_B1D.dtype)), (k_BSGK, v_BSGK)


def _blocks_decode(cfg, blocks, x_B1D, pos_B, caches, *, tp: int):
  new_caches = list(caches)
  layers = []
  for i, (wiring, block) in enumerate(zip(ladder.config_wirings(cfg), blocks)):

    def mixer(x, i=i, block=block):
      y, new_caches[i] = _attention_decode(block.mixer, block.mixer_norm(x), caches[i], pos_B,
                                           tp=tp)
      return y

    modules = [mixer]
    if block.mlp is not None:
      modules.append(lambda x, block=block: tensor_parallel.module_call(
          block.mlp, block.mlp_norm(x), tp=tp, axis_name=AXIS))
    layers.append((wiring, modules))
  reduce = (lambda y: jax.lax.psum(y, AXIS)) if tp > 1 else (lambda y: y)
  x_B1D = ladder.residual_stack(x_B1D, layers, reduce=reduce, tp=tp)
  return x_B1D, new_caches


def decode_step(model, caches, tokens_B, pos_B):
  """Logits [B, V] (float32) for `tokens_B` at positions `pos_B`, and the updated caches.

  Runs tensor-parallel under a mesh (jax.set_mesh) whose `tensor` axis is larger than 1.
  """
  cfg = model.cfg
  _check_attention_only(cfg)
  x_B1D = sharding.constrain_batch(model.embed(tokens_B[:, None]))
  tp = tensor_size()
  if tp == 1:
    x_B1D, caches = _blocks_decode(cfg, model.blocks, x_B1D, pos_B, caches, tp=1)
  else:
    cache_specs = [(P(None, None, AXIS, None),) * 2] * len(caches)
    x_B1D, caches = tensor_parallel.shard_map_modules(
        model.blocks, partial(_blocks_decode, cfg, tp=tp), x_B1D, pos_B, caches, tp=tp,
        arg_specs=[None, None, cache_specs], out_specs=(P(), cache_specs))
  return model.logits(model.final_norm(x_B1D))[:, 0], caches


def make_generate(graphdef, num_steps: int):
  """A jitted greedy loop: (state, caches, tokens_B, pos_B) -> (tokens [B, num_steps], caches).

  The whole loop is one XLA program (lax.fori_loop), so the measured speed has no Python
  dispatch in it; the caches are donated (updated in place).
  """

  def generate(state, caches, tokens_B, pos_B):
    model = nnx.merge(graphdef, state)

    def step(i, carry):
      tokens_B, pos_B, caches, out_BN = carry
      logits_BV, caches = decode_step(model, caches, tokens_B, pos_B)
      tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
      return tokens_B, pos_B + 1, caches, out_BN.at[:, i].set(tokens_B)

    out_BN = jnp.zeros((tokens_B.shape[0], num_steps), jnp.int32)
    _, _, caches, out_BN = jax.lax.fori_loop(0, num_steps, step,
                                             (tokens_B, pos_B, caches, out_BN))
    return out_BN, caches

  return jax.jit(generate, donate_argnums=1)


def init_sharded_params(cfg, mesh, *, seed: int = 0):
  """(graphdef, state) of a freshly initialised model, created directly in its sharded layout
  on `mesh` (no host copy: for models larger than one device's share)."""
  abstract = nnx.eval_shape(lambda: build_model(cfg, seed=seed))
  graphdef, abstract_state = nnx.split(abstract)
  axes = sharding.param_logical_axes(abstract, axis_size(mesh, AXIS))
  specs = sharding.tree_specs(abstract_state, axes, mesh)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                           is_leaf=lambda s: isinstance(s, P))
  state = jax.jit(lambda: nnx.split(build_model(cfg, seed=seed))[1], out_shardings=shardings)()
  return graphdef, state
