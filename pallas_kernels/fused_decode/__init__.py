"""Fused whole-model batch-1 decode (FlashFormer-style): pack a Llama-style decoder's weights
(`pack_arrays`, from arrays the model side extracts: lloglin.inference.fused), then run one
decode step in one persistent Pallas GPU kernel: Mosaic GPU (kernel_mgpu.py, the default where
it serves the model, being the faster: benchmarks/RESULTS.md#fused-decode) or the Triton lowering
(kernel.py; any GPU Triton runs on, and models the Mosaic kernel's 64-row tiles do not fit).
`step.py` picks the backend and launches it; `decode_step_reference` is the same step in plain
jnp (the oracle and baseline)."""

from pallas_kernels.fused_decode.kernel import Tiling, default_tiling
from pallas_kernels.fused_decode.kernel_mgpu import MosaicTiling, default_mosaic_tiling
from pallas_kernels.fused_decode.reference import decode_step_reference
from pallas_kernels.fused_decode.step import (BACKENDS, default_backend, fused_decode_step,
                                              mosaic_supported, num_sms)
from pallas_kernels.fused_decode.weights import (FusedConfig, FusedWeights, init_cache,
                                                 pack_arrays, random_weights)

__all__ = ["BACKENDS", "FusedConfig", "FusedWeights", "MosaicTiling", "Tiling",
           "decode_step_reference", "default_backend", "default_mosaic_tiling", "default_tiling",
           "fused_decode_step", "init_cache", "mosaic_supported", "num_sms", "pack_arrays",
           "random_weights"]
