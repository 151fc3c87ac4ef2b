"""Batch-1 decoding through the fused whole-model decode kernel (pallas_kernels.fused_decode).

The kernel only decodes (one token per launch), so the prompt is prefilled by the plain
DecoderLM.prefill, one chunked forward; its per-layer KV caches (RoPE-rotated keys and values,
[1, S, G, K] each) are stacked into the kernel's layout ([L, S, G, K] in its cache dtype), and
every new token is then one `fused_decode_step` (interpret mode off GPU: slow, for tests).

`pack_weights` extracts the model's arrays and hands them to the kernel package's `pack_arrays`.
Weight formats ('f32', 'bf16', 'int8'; weights.py in the kernel says how each rounds): the
default follows the model's compute dtype ('f32' for float32, 'bf16' for 16-bit). 'int8' is
weight-only quantisation (per-output-row scales): it changes the logits, so it can change the
tokens drawn, and it is opt-in only.
"""

import dataclasses
import weakref
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pallas_kernels.fused_decode import (FusedConfig, FusedWeights, fused_decode_step,
                                         mosaic_supported, pack_arrays)

WEIGHT_FORMATS = ("f32", "bf16", "int8")
# Formats both kernel backends have been checked in on a GPU (tests/kernels/test_fused_decode.py,
# an H200); 'auto' picks the kernel only for these ('fused' runs any format).
GPU_CHECKED_FORMATS = ("bf16", "int8")


def _unsupported(cfg, *, tiles: bool) -> str:
  """Why the fused decode cannot run a model of `cfg` ('' when it can): the packed weight layout
  (attention-only blocks with a SwiGLU MLP, standard residuals) and, with `tiles`, the kernels'
  tiling (power-of-two head dim and query heads per kv head)."""
  R = cfg.num_heads // cfg.num_kv_heads
  pow2 = lambda n: n > 0 and n & (n - 1) == 0
  checks = [
      (set(cfg.mixers) == {"attention"},
       f"model.layer_pattern={cfg.layer_pattern!r}; the fused kernel runs attention-only models"),
      (cfg.residual_mode == "standard",
       f"model.residual_mode={cfg.residual_mode!r}; the fused kernel runs 'standard' residuals"),
      (cfg.mlp_dim > 0, "model.mlp_dim=0; the fused kernel expects a SwiGLU MLP in every block"),
  ]
  if tiles:
    checks += [
        (pow2(cfg.head_dim) and cfg.head_dim >= 4,
         f"model.head_dim={cfg.head_dim}; the fused kernel needs a power of two >= 4"),
        (pow2(R), f"model.num_heads / model.num_kv_heads = {R}; the fused kernel needs a power "
                  f"of two"),
    ]
  return next((reason for ok, reason in checks if not ok), "")


def fused_decode_supported(model) -> tuple[bool, str]:
  """(True, '') when the fused kernel computes `model`'s decode step, else (False, why not)."""
  reason = _unsupported(model.cfg, tiles=True)
  return not reason, reason


def pack_weights(model, dtype: str = "bf16") -> FusedWeights:
  """FusedWeights of a DecoderLM (attention-only, standard residual, with an MLP) in weight
  format `dtype`: its arrays stacked over layers, packed by the kernel package's `pack_arrays`."""
  cfg = model.cfg
  reason = _unsupported(cfg, tiles=False)
  if reason:
    raise ValueError(reason)
  config = FusedConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, num_layers=cfg.num_layers,
                       num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                       head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim, norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, weight_format=dtype)
  blocks = list(model.blocks)
  stack = lambda get: jnp.stack([get(b)[...] for b in blocks])
  return pack_arrays(
      config, embed_VD=model.embed.embedding[...],
      attn_norm_LD=stack(lambda b: b.mixer_norm.scale),
      wq_LDN=stack(lambda b: b.mixer.q_proj.kernel), wk_LDN=stack(lambda b: b.mixer.k_proj.kernel),
      wv_LDN=stack(lambda b: b.mixer.v_proj.kernel), wo_LND=stack(lambda b: b.mixer.o_proj.kernel),
      mlp_norm_LD=stack(lambda b: b.mlp_norm.scale), wgate_LDF=stack(lambda b: b.mlp.gate.kernel),
      wup_LDF=stack(lambda b: b.mlp.up.kernel), wdown_LFD=stack(lambda b: b.mlp.down.kernel),
      final_norm_D=model.final_norm.scale[...],
      head_DV=None if model.head is None else model.head.kernel[...])


def mosaic_serves(model, fmt: str, max_len: int) -> bool:
  """Whether the kernel's Mosaic GPU backend (its default on Hopper) serves `model` at cache
  length `max_len`; `model` must pass `fused_decode_supported`."""
  return mosaic_supported(jax.eval_shape(partial(pack_weights, model, fmt)).config, max_len)


def weight_format(model, weights_dtype: str | None) -> str:
  """The packed weight format: weights_dtype, or (None) the one matching the compute dtype."""
  if weights_dtype is None:
    return "f32" if model.cfg.compute_dtype in (jnp.float32, jnp.float64) else "bf16"
  if weights_dtype not in WEIGHT_FORMATS:
    raise ValueError(f"weights_dtype={weights_dtype!r}; expected None or one of "
                     f"{WEIGHT_FORMATS}")
  return weights_dtype


_pack = jax.jit(pack_weights, static_argnames="dtype")
# model -> (format, weak references to its parameters, FusedWeights): the packed copy lives as
# long as the model and is rebuilt when the format or any parameter array changes (training).
_PACKED = weakref.WeakKeyDictionary()


def packed_weights(model, fmt: str) -> FusedWeights:
  """`model`'s weights packed for the kernel in format `fmt`, packed once per model and format."""
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  hit = _PACKED.get(model)
  if (hit is not None and hit[0] == fmt and len(hit[1]) == len(params)
      and all(ref() is p for ref, p in zip(hit[1], params))):
    return hit[2]
  weights = _pack(model, dtype=fmt)
  _PACKED[model] = (fmt, tuple(weakref.ref(p) for p in params), weights)
  return weights


class FusedCache(NamedTuple):
  """The kernel's KV cache of one sequence. k_LSGK: RoPE-rotated keys; v_LSGK: values;
  length: int32 tokens cached (the position of the next token)."""
  k_LSGK: jax.Array
  v_LSGK: jax.Array
  length: jax.Array


@partial(jax.jit, static_argnames="config")
def fused_cache(cache, config: FusedConfig) -> FusedCache:
  """A batch-1 DecoderCache of an attention-only model (after DecoderLM.prefill) in the
  kernel's layout."""
  if cache.length_B.shape != (1,):
    raise ValueError(f"cache: expected one row (batch 1), got {cache.length_B.shape[0]}")
  stack = lambda name: jnp.stack([getattr(c, name)[0] for c in cache.layers]).astype(
      config.cache_dtype)
  return FusedCache(stack("k_BSGK"), stack("v_BSGK"), cache.length_B[0])


@dataclasses.dataclass(frozen=True)
class FusedStep:
  """generate's decode step (weights, tokens_B, cache) -> (logits_BV, cache) for FusedWeights
  and a FusedCache (B = 1). Hashable by value: a static jit argument that compiles once."""
  interpret: bool

  def __call__(self, weights: FusedWeights, tokens_B, cache: FusedCache):
    logits_V, (k_LSGK, v_LSGK) = fused_decode_step(
        weights, (cache.k_LSGK, cache.v_LSGK), tokens_B[0], cache.length,
        interpret=self.interpret)
    return logits_V[None], FusedCache(k_LSGK, v_LSGK, cache.length + 1)
