"""The PaTH mixers' kernel selection: `model.mixer_options.<path|path_fox>.linear_memory` picks
the linear-memory Pallas kernels where the Pallas kernels run (forward and prefill), the XLA
form is unaffected, and a bad or unknown option is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.layers import make_mixer
from lloglin.layers.path import path_sequence_fn
from lloglin.layers.registry import KernelDispatch
from lloglin.ops.path import path_blockwise
from pallas_kernels import path as pallas_path
from tests.layers.test_mixers import tiny_config


def build(name, **options):
  cfg = tiny_config(mixer_impl="pallas", head_dim=16, mixer_options={name: options})
  return make_mixer(name, cfg, rngs=nnx.Rngs(params=0))


@pytest.mark.parametrize("name", ["path", "path_fox"])
@pytest.mark.parametrize("linear_memory", [False, True])
def test_linear_memory_option_reaches_the_kernel(name, linear_memory, monkeypatch):
  """The forward and the prefill (traced, not run) call the kernel the option names."""
  calls = []
  for kernel in ("path_attention", "path_attention_linear_memory"):
    def recording_kernel(*args, kernel=kernel, original=getattr(pallas_path, kernel), **kwargs):
      calls.append((kernel, kwargs.get("return_k_cache", False)))
      return original(*args, **kwargs)
    monkeypatch.setattr(pallas_path, kernel, recording_kernel)
  mixer = build(name, linear_memory=linear_memory)
  x_BTD = jnp.asarray(np.random.default_rng(0).normal(size=(2, 24, 32)), jnp.float32)
  y_BTD = jax.eval_shape(mixer, x_BTD)
  assert y_BTD.shape == x_BTD.shape
  jax.eval_shape(lambda x: mixer.prefill(x, mixer.init_cache(2, 32, jnp.float32)), x_BTD)
  expected = "path_attention_linear_memory" if linear_memory else "path_attention"
  assert calls == [(expected, False), (expected, True)]


def test_xla_form_and_untileable_sizes_ignore_the_option():
  xla, kernel = KernelDispatch(False, False), KernelDispatch(True, True)
  assert path_sequence_fn(xla, 16, 16, 16, linear_memory=True) is path_blockwise
  assert path_sequence_fn(kernel, 12, 12, 16, linear_memory=True) is path_blockwise
  assert path_sequence_fn(kernel, 16, 16, 16, linear_memory=True).func is (
      pallas_path.path_attention_linear_memory)


def test_bad_or_unknown_option_is_refused():
  with pytest.raises(ValueError, match=r"path_fox\.linear_memory='yes'; expected True or False"):
    build("path_fox", linear_memory="yes")
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['linear_memroy'\].*linear_memory"):
    build("path", linear_memroy=True)
