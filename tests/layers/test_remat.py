"""model.remat: every policy computes the same loss and gradients as none, keeps less, and bad
values are named; the rematerialised layer pieces keep only their inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals

from lloglin.layers.conv import ShortConv
from lloglin.layers.gates import l2_normalize
from lloglin.layers.norms import GatedRMSNorm, RMSNorm
from lloglin.layers.remat import REMAT_POLICIES
from lloglin.models import ModelConfig, build_model
from tests.ops.helpers import assert_close


def tiny(pattern, remat, impl, num_layers=2):
  return ModelConfig(vocab_size=40, d_model=32, num_layers=num_layers, num_heads=2, num_kv_heads=2,
                     head_dim=16, mlp_dim=48, max_seq_len=32, chunk_size=16, layer_pattern=pattern,
                     mixer_impl=impl, remat=remat,
                     mixer_options={"loglinear_mamba2": {"d_state": 16, "expand": 1}})


def loss_and_grads(cfg, tokens_BT, segment_ids_BT):
  graphdef, params, rest = nnx.split(build_model(cfg), nnx.Param, ...)

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(tokens_BT, segment_ids_BT=segment_ids_BT)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
  return jax.jit(jax.value_and_grad(loss))(params)


# Attention (XLA form) under every policy; log-linear Mamba-2 through its Pallas kernel's
# custom_vjp (interpret mode on the CPU: slow, so two policies) with its forward rerun ('block')
# and not rerun ('mixer_core': the kernel's backward needs only its inputs).
@pytest.mark.parametrize("pattern, impl, policies", [
    ("attention", "xla", [r for r in REMAT_POLICIES if r != "none"]),
    ("loglinear_mamba2", "pallas", ["block", "mixer_core"])])
def test_policies_give_the_loss_and_gradients_of_none(pattern, impl, policies):
  rng = np.random.default_rng(0)
  tokens_BT = jnp.asarray(rng.integers(0, 40, (2, 32)), jnp.int32)
  segment_ids_BT = jnp.asarray(np.repeat([[1] * 20 + [2] * 12], 2, axis=0), jnp.int32)
  layers = 2 if impl == "xla" else 1
  ref_loss, ref_grads = loss_and_grads(tiny(pattern, "none", impl, layers), tokens_BT,
                                       segment_ids_BT)
  for remat in policies:
    loss, grads = loss_and_grads(tiny(pattern, remat, impl, layers), tokens_BT, segment_ids_BT)
    assert_close(loss, ref_loss, rel=1e-5, name=f"{remat} loss")
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                                jax.tree_util.tree_leaves(ref_grads), strict=True):
      assert_close(g, g_ref, rel=1e-5, name=f"{remat} d{jax.tree_util.keystr(path)}")


def test_unknown_remat_names_the_valid_values():
  with pytest.raises(ValueError, match=r"model.remat='sometimes'.*'none'.*'block'"):
    tiny("attention", "sometimes", "xla")


def test_policies_keep_less_than_none():
  """A block keeps less for its backward under each policy, and nothing but its input under
  'block' (the accounting of benchmarks/memory_accounting.py, on abstract shapes)."""
  from benchmarks import memory_accounting
  cfg = tiny("loglinear_mamba2", "none", "xla")
  saved = {r: memory_accounting.saved_residuals(
      ModelConfig(**{**cfg.to_dict(), "remat": r}), 256, 2)["total_gib"] for r in REMAT_POLICIES}
  assert all(saved[r] < saved["none"] for r in REMAT_POLICIES if r != "none"), saved
  assert saved["block"] < saved["mixer_core"] < saved["dots_and_mixer_core"], saved
  # each branch's input (float32 x_BTD before the mixer and before the MLP), ids and positions
  inputs = (2 * (2 * 256 * 32 * 4) + 2 * (2 * 256 * 4)) / 2**30
  assert saved["block"] <= inputs, saved


@pytest.mark.parametrize("piece", ["rms_norm", "gated_norm", "short_conv", "l2_normalize"])
def test_layer_pieces_keep_only_their_inputs(piece):
  """What a norm / short conv / l2-normalisation keeps for its backward is no more than its bf16
  inputs (not their float32 copies nor the conv's shifted copies)."""
  B, T, C = 2, 64, 48
  rngs = nnx.Rngs(0)
  x = jax.ShapeDtypeStruct((B, T, C), jnp.bfloat16)
  ids = jax.ShapeDtypeStruct((B, T), jnp.int32)
  fn, args = {
      "rms_norm": (RMSNorm(C), (x,)),
      "gated_norm": (GatedRMSNorm(C, group_size=16, norm_before_gate=False), (x, x)),
      "short_conv": (lambda v, s, m=ShortConv(C, 4, use_bias=True, activation=True,
                                               dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                               rngs=rngs): m(v, segment_ids_BT=s), (x, ids)),
      "l2_normalize": (l2_normalize, (x,)),
  }[piece]
  kept = sum(a.size * a.dtype.itemsize for a, _ in saved_residuals(fn, *args))
  inputs = sum(a.size * jnp.dtype(a.dtype).itemsize for a in args)
  assert kept <= inputs + 4 * C * 4, (piece, kept, inputs)  # + parameters (scale, kernel, bias)
