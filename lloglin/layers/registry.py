"""Sequence mixers by name: the decoder asks this registry for the mixer of each layer.

A mixer is an NNX module built as `factory(cfg, rngs=rngs)` (cfg: lloglin.models.ModelConfig)
and called as `mixer(x_BTD, segment_ids_BT=..., positions_BT=...) -> y_BTD`. Registering a new
mixer is all it takes to use it from `model.layer_pattern`.
"""

from collections.abc import Callable

from flax import nnx

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
    raise ValueError(f"unknown mixer {name!r} in model.layer_pattern; known mixers: {mixer_names()}")
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


def check_mixer_impl(impl: str, mixer: str) -> None:
  """Rejects a model.mixer_impl that no implementation of `mixer` serves."""
  if impl not in MIXER_IMPLS:
    raise ValueError(f"model.mixer_impl={impl!r}; expected one of {MIXER_IMPLS}")
  if impl == "pallas":
    raise ValueError(f"model.mixer_impl='pallas': mixer {mixer!r} has no Pallas kernel yet; "
                     f"use 'auto' or 'xla'")
