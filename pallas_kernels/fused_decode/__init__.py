"""Fused whole-model batch-1 decode (FlashFormer-style): pack a DecoderLM's weights, then run one
decode step in one persistent Pallas GPU kernel (kernel.py says how and where it falls short of
FlashFormer). `decode_step_reference` is the same step in plain jnp (the oracle and baseline)."""

import jax

from pallas_kernels.fused_decode.kernel import Tiling, default_tiling, fused_decode_call
from pallas_kernels.fused_decode.kernel_mgpu import (MosaicTiling, default_mosaic_tiling,
                                                     fused_decode_call_mgpu)
from pallas_kernels.fused_decode.reference import decode_step_reference
from pallas_kernels.fused_decode.weights import (FusedConfig, FusedWeights, init_cache,
                                                 pack_weights, random_weights)

__all__ = ["BACKENDS", "FusedConfig", "FusedWeights", "MosaicTiling", "Tiling",
           "decode_step_reference", "default_mosaic_tiling", "default_tiling", "fused_decode_step",
           "init_cache", "num_sms", "pack_weights", "random_weights"]

BACKENDS = ("triton", "mosaic")


def num_sms() -> int:
  """Multiprocessors of the first GPU (132 on an H200); 1 without a GPU."""
  dev = jax.devices()[0]
  return getattr(dev, "core_count", 1) if dev.platform == "gpu" else 1


def fused_decode_step(weights: FusedWeights, cache, token, position, *, interpret: bool = False,
                      tiling: Tiling | MosaicTiling | None = None, backend: str = "triton"):
  """Logits [V] (float32) for `token` at `position` and the cache with its keys/values written.

  The cache (k, v: [L, S, G, K], from `init_cache`) is donated and updated in place. `backend`
  'triton' runs kernel.py (with a `Tiling`), 'mosaic' kernel_mgpu.py (with a `MosaicTiling`;
  bf16 / f32 weights only). Interpret mode runs the kernel on CPU with one block (each grid
  barrier is then already met).
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}")
  mosaic = backend == "mosaic"
  if tiling is None:
    blocks = 1 if interpret else num_sms()
    tiling = (default_mosaic_tiling if mosaic else default_tiling)(
        weights.config, blocks, cache[0].shape[1])
  expected = MosaicTiling if mosaic else Tiling
  if not isinstance(tiling, expected):
    raise ValueError(f"tiling={tiling!r}; backend {backend!r} expects a {expected.__name__}")
  if interpret and tiling.num_blocks != 1:
    raise ValueError(f"tiling.num_blocks={tiling.num_blocks}; interpret mode runs blocks one "
                     f"after another, so grid barriers need num_blocks=1")
  call = fused_decode_call_mgpu if mosaic else fused_decode_call
  return call(weights, cache, token, position, tiling=tiling, interpret=interpret)
