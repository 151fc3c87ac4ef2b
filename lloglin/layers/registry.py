"""Sequence mixers by name: the decoder asks this registry for the mixer of each layer.

A mixer is an NNX module built as `factory(cfg, rngs=rngs)` (cfg: lloglin.models.ModelConfig)
and called as `mixer(x_BTD, segment_ids_BT=..., positions_BT=...) -> y_BTD`. Registering a new
mixer is all it takes to use it from `model.layer_pattern`.
"""

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx

from pallas_kernels.device import on_hopper_gpu

_MIXERS: dict[str, Callable[..., nnx.Module]] = {}


def register_mixer(name: str):
  """Class decorator: makes the mixer available as `name` in `model.layer_pattern`."""

  def wrap(factory):
    if name in _MIXERS:
      raise ValueError(f"mixer {name!r} is registered twice")
    _MIXERS[name] = factory
    return factory

  return wrap


def mixer_names() -> list[str]:
  return sorted(_MIXERS)


def make_mixer(name: str, cfg, *, rngs: nnx.Rngs) -> nnx.Module:
  if name not in _MIXERS:
    raise ValueError(f"unknown mixer {name!r} in model.layer_pattern; known mixers: "
                     f"{mixer_names()}")
  return _MIXERS[name](cfg, rngs=rngs)


MIXER_IMPLS = ("auto", "xla", "pallas")


def mixer_options(cfg, mixer: str, defaults: dict) -> dict:
  """`model.mixer_options.<mixer>` over `defaults`; an unknown key is an error naming the valid."""
  given = cfg.options(mixer)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} in model.mixer_options.{mixer}; valid: "
                     f"{sorted(defaults)}")
  return {**defaults, **given}


@dataclasses.dataclass(frozen=True)
class KernelDispatch:
  """How a mixer (or the fused decode step) runs: through its Pallas kernel or not (`kernel`),
  and the kernel in Pallas interpret mode (`interpret`: no GPU; slow, for tests) or compiled."""
  kernel: bool
  interpret: bool


def kernel_dispatch(choice: bool | None, *, available: bool = True) -> KernelDispatch:
  """The one decision of kernel vs XLA and of interpret mode, for every mixer (`mixer_dispatch`)
  and for the fused decode step (lloglin.inference.generate).

  choice True forces the kernel, False the XLA form; None ('auto') picks the kernel where
  `available` and the default device is a Hopper-or-newer GPU. A kernel off GPU runs in
  interpret mode.
  """
  kernel = (available and on_hopper_gpu()) if choice is None else choice
  return KernelDispatch(kernel, kernel and jax.default_backend() != "gpu")


def mixer_dispatch(impl: str, mixer: str, *, has_kernel: bool) -> KernelDispatch:
  """The KernelDispatch of a model.mixer_impl value.

  'auto' picks the mixer's Pallas kernel on Hopper-or-newer GPUs and the XLA form elsewhere;
  'pallas' forces the kernel (off GPU it runs in interpret mode: slow, for tests); 'xla' forces
  the chunked XLA form. A mixer without a kernel rejects 'pallas'.
  """
  if impl not in MIXER_IMPLS:
    raise ValueError(f"model.mixer_impl={impl!r}; expected one of {MIXER_IMPLS}")
  if impl == "pallas" and not has_kernel:
    raise ValueError(f"model.mixer_impl='pallas': mixer {mixer!r} has no Pallas kernel yet; "
                     f"use 'auto' or 'xla'")
  return kernel_dispatch({"auto": None, "xla": False, "pallas": True}[impl],
                         available=has_kernel)
