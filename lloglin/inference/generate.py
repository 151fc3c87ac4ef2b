"""Generation over decode caches: the prompts are prefilled once, then one token per decode step.

    rows = generate(model, [[1, 5, 9], [7]], max_new_tokens=20, temperature=0.8, top_p=0.9)

Prompts of different lengths share a batch (right-padded; each row continues at its own length,
so a row's tokens do not depend on the others under greedy decoding). Without `on_token` the
decode loop is one XLA program (a lax.while_loop inside jit) that ends once every row has drawn
a stop token or max_new_tokens; with `on_token` a jitted step runs per token from Python and
each row's tokens are streamed as they come. Both draw the same tokens: step i samples with
fold_in(key(seed), i).

`impl` picks the decode step. 'plain' is DecoderLM.decode_step (the mixers' *_step ops; every
architecture, any batch). 'fused' runs one prompt through the fused whole-model decode kernel
(pallas_kernels.fused_decode via lloglin.inference.fused: attention-only Llama-style models,
batch 1; the prompt is prefilled by the plain DecoderLM.prefill, then each token is one kernel
launch, in interpret mode off GPU); it raises a ValueError saying why where it does not apply.
'auto' picks 'fused' for one prompt of a supported model on a Hopper-or-newer GPU, in a weight
format the kernel has been checked in on a GPU (bf16, int8), where it was measured faster: at any
width when the kernel's Mosaic GPU backend (its default on Hopper) serves the model, up to
FUSED_AUTO_MAX_D_MODEL when only its Triton backend does; and 'plain' otherwise.
`weights_dtype` ('f32' | 'bf16' | 'int8'; default that of the compute dtype) is the fused
path's weight format; 'int8' (weight-only quantisation) changes the logits.

`steering` (lloglin.models.decoder.Steering) adds a vector to the residual stream at one layer
through the prefill and every decode step (positions counted from each prompt's first token); it
runs on the plain path ('auto' picks it, 'fused' refuses).
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lloglin.inference.fused import (GPU_CHECKED_FORMATS, FusedStep, fused_cache,
                                     fused_decode_supported, mosaic_serves, packed_weights,
                                     weight_format)
from lloglin.inference.sampling import check_sampling, sample_token
from lloglin.layers.registry import kernel_dispatch
from lloglin.models.decoder import Steering

DECODE_IMPLS = ("auto", "plain", "fused")
# 'auto' takes the fused kernel's Mosaic GPU backend at any width (it beat the plain jitted step
# at every model size timed, 138M to 8B) and its Triton backend, for models only that one serves,
# up to this width (it beat the plain step at d_model 768 and 2048 and lost at 4096); figures:
# benchmarks/RESULTS.md#fused-decode and its lab log.
FUSED_AUTO_MAX_D_MODEL = 2048
_BUCKET = 64  # prompt and cache lengths are rounded up to a multiple: fewer compilations


class Sampling(NamedTuple):
  """Static sampling parameters (see sample_token)."""
  temperature: float
  top_k: int
  top_p: float


def plain_decode_step(model, tokens_B, cache, steering=None):
  """(logits_BV, cache) of one token per row through DecoderLM.decode_step."""
  return model.decode_step(tokens_B, cache, steering=steering)


def _step(step, model, tokens_B, cache, steering):
  """`step`'s (logits_BV, cache); only the plain step takes a steering (resolve_decode_impl keeps
  the fused one away from it)."""
  if steering is None:
    return step(model, tokens_B, cache)
  return step(model, tokens_B, cache, steering)


def resolve_decode_impl(impl: str, model, batch_size: int, fmt: str = "bf16", *,
                        steered: bool = False) -> str:
  """'plain' or 'fused': what `impl` runs for `batch_size` prompts with weights in format `fmt`,
  `steered` or not (see the module docstring). impl='fused' where the kernel does not apply ->
  ValueError."""
  if impl not in DECODE_IMPLS:
    raise ValueError(f"impl={impl!r}; expected one of {DECODE_IMPLS}")
  if impl == "plain":
    return "plain"
  ok, reason = fused_decode_supported(model)
  if ok and batch_size != 1:
    ok, reason = False, f"{batch_size} prompts; the fused kernel decodes one sequence (batch 1)"
  if ok and steered:
    ok, reason = False, "steering runs on the plain decode path (impl='plain' or 'auto')"
  if impl == "fused":
    if not ok:
      raise ValueError(f"impl='fused': {reason}")
    return "fused"
  if not kernel_dispatch(None, available=ok and fmt in GPU_CHECKED_FORMATS).kernel:
    return "plain"
  measured_faster = (model.cfg.d_model <= FUSED_AUTO_MAX_D_MODEL
                     or mosaic_serves(model, fmt, _BUCKET))
  return "fused" if measured_faster else "plain"


def _sample(logits_BV, key, i, sampling: Sampling):
  return sample_token(logits_BV, jax.random.fold_in(key, i), **sampling._asdict())


# The jitted functions take the model itself (an nnx pytree; for impl='fused' the decode loops
# take its FusedWeights instead): compiled once per architecture.


@partial(jax.jit, static_argnames=("max_len", "sampling"))
def _prefill(model, tokens_BT, lengths_B, key, steering, *, max_len, sampling):
  """The first new token of every row, and the cache after the prompts."""
  cache = model.init_cache(tokens_BT.shape[0], max_len)
  logits_BV, cache = model.prefill(tokens_BT, cache, lengths_B, steering=steering)
  return _sample(logits_BV, key, 0, sampling), cache


@partial(jax.jit, static_argnames=("step", "sampling"), donate_argnames=("cache",))
def _decode_one(model, tokens_B, cache, key, i, steering, *, step, sampling):
  """Token i of every row from token i - 1 (the streaming path)."""
  logits_BV, cache = _step(step, model, tokens_B, cache, steering)
  return _sample(logits_BV, key, i, sampling), cache


@partial(jax.jit, static_argnames=("step", "sampling", "max_new_tokens", "stop_tokens"))
def _decode_loop(model, first_B, cache, key, steering, *, step, sampling, max_new_tokens,
                 stop_tokens):
  """Tokens [B, max_new_tokens] (those past the returned count are 0) by a while_loop that ends
  at max_new_tokens or once every row has drawn a stop token."""
  stop_S = jnp.asarray(stop_tokens, jnp.int32).reshape(-1)
  out_BN = jnp.zeros((first_B.shape[0], max_new_tokens), jnp.int32).at[:, 0].set(first_B)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, tokens_B, done_B, out_BN, cache = carry
    logits_BV, cache = _step(step, model, tokens_B, cache, steering)
    tokens_B = _sample(logits_BV, key, i, sampling)
    out_BN = jax.lax.dynamic_update_slice(out_BN, tokens_B[:, None], (0, i))
    return i + 1, tokens_B, done_B | jnp.isin(tokens_B, stop_S), out_BN, cache

  carry = (jnp.int32(1), first_B, jnp.isin(first_B, stop_S), out_BN, cache)
  count, _, _, out_BN, _ = jax.lax.while_loop(cond, body, carry)
  return out_BN, count


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _check_prompts(prompts, max_new_tokens: int, cfg) -> list[list[int]]:
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise ValueError(f"prompts: expected a non-empty list of token lists, got {prompts!r:.80}")
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected an int >= 0")
  rows = []
  for b, prompt in enumerate(prompts):
    if isinstance(prompt, (int, np.integer)):
      raise ValueError(f"prompts[{b}]={prompt!r} is a token, not a token list: pass a batch of "
                       f"prompts, e.g. [[1, 2, 3]] for one prompt")
    row = [int(t) for t in prompt]
    if not row:
      raise ValueError(f"prompts[{b}] is empty; generation needs at least one prompt token")
    bad = [t for t in row if not 0 <= t < cfg.vocab_size]
    if bad:
      raise ValueError(f"prompts[{b}] has token(s) {bad[:5]} outside the vocabulary "
                       f"[0, {cfg.vocab_size})")
    if len(row) + max_new_tokens > cfg.max_seq_len:
      raise ValueError(f"prompts[{b}]: {len(row)} prompt tokens + max_new_tokens="
                       f"{max_new_tokens} exceed model.max_seq_len={cfg.max_seq_len}")
    rows.append(row)
  return rows


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_tokens: Sequence[int] = (),
             on_token: Callable[[int, int], None] | None = None,
             impl: str = "auto", weights_dtype: str | None = None,
             steering: Steering | None = None) -> list[list[int]]:
  """The continuation (new tokens only) of every prompt, each ending at its first stop token
  (included) or after max_new_tokens.

  temperature 0 is greedy; top_k / top_p restrict sampling (see sample_token); `seed` makes the
  draws reproducible. `on_token(row, token)` is called for each new token of each row as soon
  as it is drawn (streaming). `impl`: 'auto' | 'plain' | 'fused' and `weights_dtype` (the fused
  path's weight format), `steering` (an intervention; per-row start / stop have one entry per
  prompt): see the module docstring.
  """
  cfg = model.cfg
  rows = _check_prompts(prompts, max_new_tokens, cfg)
  check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
  if steering is not None:
    model.check_steering(steering)
    for name in ("start_B", "stop_B"):
      shape = jnp.shape(getattr(steering, name))
      if shape not in ((), (len(rows),)):
        raise ValueError(f"steering.{name}: expected one bound or one per prompt "
                         f"({len(rows)},), got shape {shape}")
  fmt = weight_format(model, weights_dtype)
  impl = resolve_decode_impl(impl, model, len(rows), fmt, steered=steering is not None)
  if max_new_tokens == 0:
    return [[] for _ in rows]
  sampling = Sampling(float(temperature), int(top_k), float(top_p))
  stop = tuple(sorted({int(t) for t in stop_tokens}))
  lengths = [len(r) for r in rows]
  T = min(_round_up(max(lengths), _BUCKET), cfg.max_seq_len)
  max_len = min(_round_up(max(T, max(lengths) + max_new_tokens), _BUCKET), cfg.max_seq_len)
  tokens_BT = np.zeros((len(rows), T), np.int32)
  for b, row in enumerate(rows):
    tokens_BT[b, :len(row)] = row
  key = jax.random.key(seed)
  first_B, cache = _prefill(model, jnp.asarray(tokens_BT),
                            jnp.asarray(lengths, jnp.int32), key, steering, max_len=max_len,
                            sampling=sampling)
  net, step = model, plain_decode_step
  if impl == "fused":
    net = packed_weights(model, fmt)
    cache = fused_cache(cache, net.config)
    step = FusedStep(interpret=kernel_dispatch(True).interpret)
  if on_token is None:
    out_BN, count = _decode_loop(net, first_B, cache, key, steering, step=step,
                                 sampling=sampling, max_new_tokens=max_new_tokens,
                                 stop_tokens=stop)
    steps = np.asarray(out_BN)[:, :int(count)]
  else:
    steps = _stream(net, first_B, cache, key, steering, step, sampling, max_new_tokens, stop,
                    on_token)
  out = []
  for row in steps.tolist():
    ends = [i for i, t in enumerate(row) if t in stop]
    out.append(row[:ends[0] + 1] if ends else row)
  return out


def _stream(model, tokens_B, cache, key, steering, step, sampling, max_new_tokens, stop,
            on_token) -> np.ndarray:
  """The streaming decode loop: a jitted step per token, on_token for every live row."""
  done_B = np.zeros(tokens_B.shape, bool)
  steps = []
  for i in range(max_new_tokens):
    if i:
      tokens_B, cache = _decode_one(model, tokens_B, cache, key, i, steering, step=step,
                                    sampling=sampling)
    host_B = np.asarray(tokens_B)
    steps.append(host_B)
    for b in np.flatnonzero(~done_B):
      on_token(int(b), int(host_B[b]))
    done_B |= np.isin(host_B, stop)
    if done_B.all():
      break
  return np.stack(steps, axis=1)
