"""Decoder-only LM: embedding, pre-norm blocks (mixer + SwiGLU), final norm, tied or untied head.

The blocks are joined by `cfg.residual_mode` (standard | ladder | parallel | desync; see
lloglin.models.ladder). Under a mesh with a `tensor` axis larger than 1 (set by
`jax.set_mesh`, as the trainer does) the block stack runs tensor-parallel inside one shard_map
(lloglin.parallel.tensor_parallel); otherwise it runs as plain code that XLA may shard by the
input shardings (data parallelism, FSDP). Every residual mode has the same parameters, so a
checkpoint trained in one mode loads into another (`with_residual_mode`).

Cached decoding (`init_cache`, `prefill`, `decode_step`; lloglin.inference.generate drives them)
runs the same blocks and residual wiring with each mixer's prefill / one-token step and cache
(lloglin.layers.cache).

Probing (`DecoderLM.probe`): the residual stream entering every block and after the last one, and
each block's mixer and MLP outputs, at chosen positions; a `Steering` adds a vector to the stream
at one layer and range of positions, in `probe`, `prefill` and `decode_step` alike. Without them
(`__call__`, `hidden`, the training step) nothing extra is traced.
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec as P

from lloglin.layers import make_mixer
from lloglin.layers.linear import dense
from lloglin.layers.mlp import SwiGLU
from lloglin.layers.norms import RMSNorm
from lloglin.layers.remat import rematerialised
from lloglin.models import ladder
from lloglin.models.config import ModelConfig
from lloglin.parallel import mesh as mesh_lib, sharding, tensor_parallel


class Block(nnx.Module):
  """A mixer and a SwiGLU MLP (none when cfg.mlp_dim == 0), each behind its own RMSNorm; how
  their outputs join the residual stream is the residual mode's business (`run_blocks`)."""

  def __init__(self, cfg: ModelConfig, mixer: str, *, rngs: nnx.Rngs):
    self.mixer_name = mixer
    self.remat = cfg.remat
    self.mixer_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
    self.mixer = make_mixer(mixer, cfg, rngs=rngs)
    if cfg.mlp_dim:
      self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.weight_dtype)
      self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, dtype=cfg.compute_dtype,
                        param_dtype=cfg.weight_dtype, rngs=rngs)
    else:
      self.mlp = None

  def modules(self, *, segment_ids_BT, positions_BT, tp: int = 1, axis_name=None, mixer=None):
    """The block's residual branches as functions x_BTD -> (partial, when tp > 1) output.

    `mixer` (normed x -> y) replaces the mixer's full-sequence call: the cached paths (prefill,
    decode_step) pass calls that also thread the mixer's cache. The full-sequence branches run
    under cfg.remat's policy (lloglin.layers.remat); the cached ones never (no backward pass).
    """
    call = partial(tensor_parallel.module_call, tp=tp, axis_name=axis_name)
    remat = self.remat
    if mixer is None:
      mixer = lambda x: call(self.mixer, x, segment_ids_BT=segment_ids_BT,
                             positions_BT=positions_BT)
    else:
      remat = "none"
    out = [lambda x: mixer(self.mixer_norm(x))]
    if self.mlp is not None:
      out.append(lambda x: call(self.mlp, self.mlp_norm(x)))
    return [rematerialised(fn, remat) for fn in out]


@struct.dataclass
class DecoderCache:
  """Decode cache of a DecoderLM (a pytree; max_len is static).

  layers: one cache per layer, its mixer's (lloglin.layers.cache).
  length_B: int32 tokens of each row in the cache (the position of its next token).
  max_len: positions the caches hold (KV / PaTH capacity).
  """
  layers: tuple
  length_B: jax.Array
  max_len: int = struct.field(pytree_node=False)

  def shardings(self, mesh):
    """NamedShardings splitting every leaf over the batch axes of `mesh` (data parallel decoding;
    every cache leaf is batch-first): `jax.device_put(cache, cache.shardings(mesh))`."""
    def spec(x):
      return NamedSharding(mesh, P(sharding.batch_axes(mesh, x.shape[0]), *[None] * (x.ndim - 1)))
    return jax.tree.map(spec, self)


PROBE_SITES = ("resid", "mixer", "mlp")


@struct.dataclass
class Steering:
  """An intervention: strength * vector_D added to the residual stream entering block `layer`
  (layer == num_layers: the stream after the last block, before the final norm), at the
  positions p of each row with start_B <= p < stop_B (p counts from 0 at the row's first token,
  or at each packed document's; in decoding, the cache length).

  Every field is an array (make one with `steer`), so a sweep over layer, strength, vector or
  positions reuses one compiled program. With strength 0 the stream is unchanged (it adds zeros),
  and the stream entering blocks below `layer` is never touched.
  """
  vector_D: jax.Array
  layer: jax.Array
  strength: jax.Array
  start_B: jax.Array
  stop_B: jax.Array


def steer(vector_D, *, layer: int, strength: float = 1.0, start=0, stop=None) -> Steering:
  """A Steering from plain values; start / stop are ints or one per row ([B]); stop None = no
  end (every later position, generated tokens included)."""
  vector_D = jnp.asarray(vector_D, jnp.float32)
  if vector_D.ndim != 1:
    raise ValueError(f"vector_D: expected one vector [d_model], got shape {vector_D.shape}")
  stop = jnp.iinfo(jnp.int32).max if stop is None else stop
  return Steering(vector_D, jnp.asarray(layer, jnp.int32), jnp.asarray(strength, jnp.float32),
                  jnp.asarray(start, jnp.int32), jnp.asarray(stop, jnp.int32))


class Probe:
  """What one probed run records and changes; `residual_stack` calls `stream` and `branch`.

  positions: the position of each token the stack runs ([B, T], or [B] for a decode step), for
  the steering's range. sites: which of PROBE_SITES to record; index_BP: the positions of each row
  to record (None: all), a [B, P] integer array.
  """

  def __init__(self, positions, *, steering: Steering | None = None, sites=(), index_BP=None):
    self.positions, self.steering, self.index_BP = positions, steering, index_BP
    self.records = {site: [] for site in sites}

  def _keep(self, site, x_BTD):
    if site in self.records:
      if self.index_BP is not None:
        x_BTD = jnp.take_along_axis(x_BTD, self.index_BP[..., None], axis=1)
      self.records[site].append(x_BTD)

  def stream(self, i, x):
    delta = None
    st = self.steering
    if st is not None:
      p = self.positions
      bound = lambda a: jnp.reshape(a, a.shape + (1,) * (p.ndim - a.ndim))
      on = (p >= bound(st.start_B)) & (p < bound(st.stop_B)) & (st.layer == i)
      delta = jnp.where(on[..., None], st.strength * st.vector_D, 0).astype(x.dtype)
    self._keep("resid", x if delta is None else x + delta)
    return delta

  def branch(self, i, j, y):
    del i
    self._keep(PROBE_SITES[1 + j], y)


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

  def hidden(self, tokens_BT, *, segment_ids_BT=None, positions_BT=None, probe=None):
    """Final-normed hidden states [B, T, D]; `probe` (a Probe, one device) records and steers
    the residual stream on the way (DecoderLM.probe)."""
    B, T = tokens_BT.shape
    if T > self.cfg.max_seq_len:
      raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.cfg.max_seq_len}")
    if positions_BT is None:
      positions_BT = _arange_BT(B, T)
    x_BTD = sharding.constrain_batch(self.embed(tokens_BT))
    tp = mesh_lib.tensor_size()
    if tp == 1:
      x_BTD = run_blocks(self.cfg, self.blocks, x_BTD, segment_ids_BT, positions_BT, probe=probe)
    elif probe is not None:
      raise ValueError("probing and steering run without tensor parallelism (mesh 'tensor' axis "
                       "of size 1)")
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

  def probe(self, tokens_BT, *, sites=("resid",), index_BP=None, steering: Steering | None = None,
            segment_ids_BT=None, positions_BT=None) -> dict:
    """The forward pass with its insides: {"logits": [B, P, V] float32, and per site asked for
    "resid": [L + 1, B, P, D], the residual stream entering block 0..L-1 and after block L-1
    (before the final norm: final_norm then logits of resid[L] are the logits), "mixer" / "mlp":
    [L, B, P, D], each block's mixer / MLP output}. P indexes index_BP, the positions of each row
    to keep ([B, P] ints in [0, T); None keeps all, P = T). `steering` intervenes (Steering).
    The logits equal __call__'s; only what the probe adds is traced beyond it.
    """
    sites = tuple(sites)
    bad = [s for s in sites if s not in PROBE_SITES]
    if bad or (not self.cfg.mlp_dim and "mlp" in sites):
      raise ValueError(f"sites={sites!r}; expected a subset of {PROBE_SITES}"
                       + ("" if bad else " without 'mlp' (model.mlp_dim=0: no MLP)"))
    self.check_steering(steering)
    B, T = tokens_BT.shape
    if index_BP is not None and (jnp.ndim(index_BP) != 2 or jnp.shape(index_BP)[0] != B):
      raise ValueError(f"index_BP: expected [B={B}, P] positions, got shape {jnp.shape(index_BP)}")
    if positions_BT is None:
      positions_BT = _arange_BT(B, T)
    probe = Probe(positions_BT, steering=steering, sites=sites, index_BP=index_BP)
    h_BTD = self.hidden(tokens_BT, segment_ids_BT=segment_ids_BT, positions_BT=positions_BT,
                        probe=probe)
    if index_BP is not None:
      h_BTD = jnp.take_along_axis(h_BTD, index_BP[..., None], axis=1)
    return {"logits": self.logits(h_BTD), **{k: jnp.stack(v) for k, v in probe.records.items()}}

  def check_steering(self, steering: Steering | None):
    """A steering vector of width d_model, and (where it is known outside jit) a layer in
    [0, num_layers]."""
    if steering is None:
      return
    if steering.vector_D.shape != (self.cfg.d_model,):
      raise ValueError(f"steering.vector_D: expected shape ({self.cfg.d_model},) (d_model), got "
                       f"{steering.vector_D.shape}")
    if not isinstance(steering.layer, jax.core.Tracer):
      layer = int(steering.layer)
      if not 0 <= layer <= self.cfg.num_layers:
        raise ValueError(f"steering layer={layer}; expected 0..{self.cfg.num_layers} (the stream "
                         f"entering block 0..{self.cfg.num_layers - 1}, or after the last block)")

  # Cached decoding: init_cache, prefill (the prompt, chunked forms), decode_step (one token,
  # the *_step ops). Every residual mode; one device or data parallel (tensor-parallel decoding
  # of attention-only models: lloglin.inference.tp_decode).

  def init_cache(self, batch_size: int, max_len: int, dtype=None) -> DecoderCache:
    """An empty cache for batch_size rows of up to max_len tokens (prompt + generated).

    dtype (default the compute dtype) is that of keys, values and conv states; recurrent states
    are float32.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}; expected at least one row")
    if not 1 <= max_len <= self.cfg.max_seq_len:
      raise ValueError(f"max_len={max_len}; expected 1 <= max_len <= model.max_seq_len="
                       f"{self.cfg.max_seq_len}")
    dtype = self.cfg.compute_dtype if dtype is None else dtype
    layers = tuple(b.mixer.init_cache(batch_size, max_len, dtype) for b in self.blocks)
    return DecoderCache(layers, jnp.zeros((batch_size,), jnp.int32), max_len)

  def prefill(self, tokens_BT, cache: DecoderCache, lengths_B=None, *,
              steering: Steering | None = None):
    """Runs right-padded prompts (row b: its first lengths_B[b] >= 1 tokens; default all T) into
    `cache`, whose previous contents are replaced. Returns the logits [B, vocab] (float32) at each
    row's last prompt token and the cache. `steering` intervenes as in `probe`."""
    self._check_rows("tokens_BT", tokens_BT, cache)
    self.check_steering(steering)
    B, T = tokens_BT.shape
    if T > cache.max_len:
      raise ValueError(f"tokens_BT: a prompt of {T} tokens does not fit the cache "
                       f"(max_len={cache.max_len})")
    if lengths_B is None:
      lengths_B = jnp.full((B,), T, jnp.int32)
    elif jnp.shape(lengths_B) != (B,):
      raise ValueError(f"lengths_B: expected shape ({B},), got {jnp.shape(lengths_B)}")
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    probe = None if steering is None else Probe(_arange_BT(B, T), steering=steering)
    h_BTD, layers = self._run_cached(self.embed(tokens_BT), cache.layers,
                                     lambda mixer, x, c: mixer.prefill(x, c, lengths_B), probe)
    h_BD = h_BTD[jnp.arange(B), lengths_B - 1]
    return self.logits(h_BD), DecoderCache(layers, lengths_B, cache.max_len)

  def decode_step(self, tokens_B, cache: DecoderCache, *, steering: Steering | None = None):
    """One token per row at position cache.length_B: (logits [B, vocab] float32, new cache).
    `steering` intervenes as in `probe` (at position cache.length_B).

    A row whose cache is full (length_B == max_len) gets meaningless logits (nothing can raise
    inside jit); callers keep prompt + new tokens <= max_len.
    """
    self._check_rows("tokens_B", tokens_B, cache)
    self.check_steering(steering)
    probe = None if steering is None else Probe(cache.length_B, steering=steering)
    h_BD, layers = self._run_cached(self.embed(tokens_B), cache.layers,
                                    lambda mixer, x, c: mixer.step(x, c), probe)
    return self.logits(h_BD), DecoderCache(layers, cache.length_B + 1, cache.max_len)

  @staticmethod
  def _check_rows(name, tokens, cache):
    """tokens_BT / tokens_B: the axes its name says, one row per cache row."""
    rows, axes = cache.length_B.shape[0], len(name.split("_")[-1])
    if jnp.ndim(tokens) != axes or jnp.shape(tokens)[0] != rows:
      raise ValueError(f"{name}: expected {axes} axes with {rows} rows (the cache's batch "
                       f"size), got shape {jnp.shape(tokens)}")

  def _run_cached(self, x, caches, call, probe=None):
    """The block stack with each mixer run as call(mixer, normed x, its cache) -> (y, cache);
    x is [B, T, D] (prefill) or [B, D] (decode). Returns (final-normed x, new caches)."""
    if mesh_lib.tensor_size() > 1:
      raise ValueError("cached decoding runs without tensor parallelism (mesh 'tensor' axis of "
                       "size 1); for attention-only models use lloglin.inference.tp_decode")
    new = list(caches)

    def mixer_fn(i):
      def run(x):
        y, new[i] = call(self.blocks[i].mixer, x, caches[i])
        return y
      return run

    x = run_blocks(self.cfg, self.blocks, sharding.constrain_batch(x), None, None,
                   mixers=[mixer_fn(i) for i in range(len(self.blocks))], probe=probe)
    return self.final_norm(x), tuple(new)


def run_blocks(cfg: ModelConfig, blocks, x_BTD, segment_ids_BT, positions_BT, *, tp: int = 1,
               axis_name: str = tensor_parallel.AXIS, mixers=None, probe: Probe | None = None):
  """The residual stream through every block, wired by cfg.residual_mode.

  With tp > 1 this runs on one device inside shard_map: the blocks hold their local shards and
  each module's partial output is completed by a psum over `axis_name`. `mixers` (one function
  per block, or None) replaces the mixers' calls (Block.modules). `probe`: see residual_stack.
  """
  mixers = [None] * len(blocks) if mixers is None else mixers
  layers = [(w, b.modules(segment_ids_BT=segment_ids_BT, positions_BT=positions_BT, tp=tp,
                          axis_name=axis_name, mixer=m))
            for w, b, m in zip(ladder.config_wirings(cfg), blocks, mixers)]
  reduce = (lambda y: jax.lax.psum(y, axis_name)) if tp > 1 else (lambda y: y)
  return ladder.residual_stack(x_BTD, layers, reduce=reduce, tp=tp, probe=probe)


def _arange_BT(B: int, T: int):
  return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


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
