"""One fused decode step: the choice of backend (Mosaic GPU, kernel_mgpu.py, or Triton, kernel.py)
and of its tiling, then the kernel launch."""

import jax

from pallas_kernels.device import on_hopper_gpu
from pallas_kernels.fused_decode.kernel import Tiling, default_tiling, fused_decode_call
from pallas_kernels.fused_decode.kernel_mgpu import (MosaicTiling, check_mosaic,
                                                     default_mosaic_tiling,
                                                     fused_decode_call_mgpu)
from pallas_kernels.fused_decode.weights import FusedConfig, FusedWeights

BACKENDS = ("triton", "mosaic")


def num_sms() -> int:
  """Multiprocessors of the first GPU (132 on an H200); 1 without a GPU."""
  dev = jax.devices()[0]
  return getattr(dev, "core_count", 1) if dev.platform == "gpu" else 1


def mosaic_supported(config: FusedConfig, max_len: int) -> bool:
  """Whether kernel_mgpu.py serves this model and cache length (64-row tiles: see
  `check_mosaic`)."""
  try:
    check_mosaic(config, default_mosaic_tiling(config, 1, max_len), max_len)
  except ValueError:
    return False
  return True


def default_backend(config: FusedConfig, max_len: int, interpret: bool = False) -> str:
  """'mosaic' where kernel_mgpu.py serves the model on a Hopper-or-newer GPU (Mosaic GPU needs
  one) or in interpret mode, else 'triton': the Mosaic kernel is the faster
  (benchmarks/RESULTS.md#fused-decode)."""
  return ("mosaic" if (interpret or on_hopper_gpu()) and mosaic_supported(config, max_len)
          else "triton")


def fused_decode_step(weights: FusedWeights, cache, token, position, *, interpret: bool = False,
                      tiling: Tiling | MosaicTiling | None = None, backend: str | None = None):
  """Logits [V] (float32) for `token` at `position` and the cache with its keys/values written.

  The cache (k, v: [L, S, G, K], from `init_cache`) is donated and updated in place. `backend`
  'mosaic' runs kernel_mgpu.py (with a `MosaicTiling`), 'triton' kernel.py (with a `Tiling`);
  None follows the tiling's type, or without one `default_backend`. Interpret mode runs the
  kernel on CPU with one block (each grid barrier is then already met).
  """
  if backend is None:
    backend = ("mosaic" if isinstance(tiling, MosaicTiling) else "triton" if tiling else
               default_backend(weights.config, cache[0].shape[1], interpret))
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; expected None or one of {BACKENDS}")
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
