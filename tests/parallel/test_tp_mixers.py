"""Tensor parallelism of the recurrent and PaTH mixers (heads split over `tensor`, like attention)
equals the single-device model: outputs in every residual mode and gradients, bad head counts,
and the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lloglin.models import build_model
from lloglin.models.ladder import RESIDUAL_MODES
from lloglin.parallel import hlo, sharding
from tests.parallel.helpers import on_mesh, replace, tiny_config, tokens
from tests.models.test_ladder import _compiled_hidden_hlo
from tests.parallel.test_train_mesh import ONE_DEVICE, _train

# (mixer, its options, config overrides, mesh): each shared-group case once, split (tp divides
# the groups) and replicated (the groups divide tp); Mamba-2 with one group normalises over all
# of d_inner, here spread over 4 devices.
CASES = [
    ("mamba2", dict(d_state=8), {}, dict(data=2, tensor=4)),
    ("loglinear_mamba2", dict(d_state=8, ngroups=4), {}, dict(data=2, tensor=2)),  # groups split
    ("gdn", {}, {}, dict(data=2, tensor=4)),  # 8 q/k heads split
    ("loglinear_gdn", dict(num_heads=2, num_v_heads=8), {}, dict(data=2, tensor=4)),  # replicated
    ("path", {}, {}, dict(data=2, tensor=4)),  # 2 kv heads replicated
    ("path_fox", {}, dict(num_kv_heads=8), dict(data=2, tensor=2)),  # split; low-rank w (H == G)
]


# XLA:CPU's LLVM passes are most of these tests' time; the same options for both sides of each
# comparison (the HLO the collectives live in is optimised as usual).
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def _config(mixer, options, **kw):
  return tiny_config(layer_pattern=mixer, num_layers=1, chunk_size=8,
                     mixer_options={mixer: options}, **kw)


def assert_close_to_scale(tree, ref, tol):
  """Every leaf within tol of the reference, relative to the largest entry of that leaf."""
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(ref)):
    scale = max(float(np.abs(b).max()), 1e-6)
    err = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert err <= tol * scale, (jax.tree_util.keystr(path), err, scale)


def _outputs(graphdefs, state, t, mesh=None):
  """Hidden states of every residual mode, and the gradients of a loss on the ladder model's
  (every mode's model has the same parameters), in one program; on `mesh` if given."""
  params, rest = nnx.split_state(state, nnx.Param, ...)
  w_BTD = jax.random.normal(jax.random.key(1), (*t.shape, 32))  # tiny_config: d_model 32

  def loss(params, rest):
    h_BTD = nnx.merge(graphdefs["ladder"], params, rest).hidden(t)
    return jnp.sum(h_BTD * w_BTD)

  def fn(params, rest):
    hidden = {m: nnx.merge(g, params, rest).hidden(t) for m, g in graphdefs.items()}
    return hidden, jax.grad(loss)(params, rest)

  run = lambda *args: jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)
  return run(params, rest) if mesh is None else sharding.use_mesh(mesh, run)(params, rest)


@pytest.mark.parametrize("mixer, options, overrides, mesh_shape", CASES,
                         ids=[c[0] for c in CASES])
def test_tp_mixer_equals_single_device(mixer, options, overrides, mesh_shape):
  """Each residual mode (desync keeping every all-reduce: the standard model's math) and the
  ladder model's gradients, tensor-parallel vs one device, within 1e-5 of each leaf's scale.

  The models run in float64: in float32 the partial sums of tensor parallelism, added in another
  order, move single entries of GDN's hidden states by 2e-5 of their scale and log-linear GDN's
  A_log gradient by 4.4e-5 (rounding, not another function); float64 leaves only the float32
  gates' rounding."""
  with jax.enable_x64(True):
    base = _config(mixer, options, dtype="float64", param_dtype="float64", **overrides)
    models = {m: build_model(replace(base, residual_mode=m, desync_reduce="both"))
              for m in RESIDUAL_MODES}
    state = nnx.state(models["standard"])
    graphdefs = {m: nnx.graphdef(model) for m, model in models.items()}
    t = tokens(length=16)
    ref_h, ref_g = _outputs(graphdefs, state, t)
    mesh, _, state_tp = on_mesh(models["standard"], mesh_shape)
    h, g = _outputs(graphdefs, state_tp, t, mesh)
    assert_close_to_scale(h, ref_h, 1e-5)
    assert_close_to_scale(g, ref_g, 1e-5)
    assert np.abs(np.asarray(ref_h["standard"])).max() > 0.1
    assert np.abs(np.asarray(ref_h["ladder"] - ref_h["standard"])).max() > 1e-3  # other models
    # The mixer's heads really are split: its output projection holds 1/tp of the rows per device.
    flat = dict(nnx.to_flat_state(state_tp))
    out_proj = next(v for k, v in flat.items()
                    if k[2] == "mixer" and k[3] in ("o_proj", "out_proj"))
    assert out_proj.get_value().sharding.spec == P("tensor")


REFUSALS = [
    ("mamba2", {}, r"mamba2: tensor parallelism tp=3 must divide heads \(expand \* d_model / "
                   r"head_dim\)=16"),
    ("loglinear_gdn", {}, "loglinear_gdn: tensor parallelism tp=3 must divide "
                          "model.mixer_options.loglinear_gdn.num_v_heads=8"),
    ("gdn", dict(num_heads=6, num_v_heads=12), r"gdn: tensor parallelism tp=4 and "
                                               r"model.mixer_options.gdn.num_heads=6: one must"),
    ("path_fox", {}, "path_fox: tensor parallelism tp=3 must divide model.num_heads=8"),
]


@pytest.mark.parametrize("mixer, options, message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_head_counts_that_tp_does_not_divide_are_refused(mixer, options, message):
  model = nnx.eval_shape(lambda: build_model(_config(mixer, options)))
  tp = 4 if "tp=4" in message else 3
  with pytest.raises(ValueError, match=message):
    sharding.param_logical_axes(model, tp)


def test_hlo_one_all_reduce_per_module_and_ladder_overlap_for_every_mixer():
  """A ladder model with one layer of each mixer (and MLPs), tp = 4: one all-reduce per module
  (the Mamba-2 norm's sums of squares are an all-gather, not counted), none merged by XLA, and
  each has matmuls that neither feed it nor wait for it (the next module's: Ladder Residual)."""
  mixers = [c[0] for c in CASES]
  text = _compiled_hidden_hlo("ladder", model_kw=dict(
      layer_pattern=",".join(mixers), num_layers=len(mixers), chunk_size=8,
      mixer_options={m: dict(d_state=8) for m in ("mamba2", "loglinear_mamba2")}))
  reports = hlo.all_reduce_overlap(text, match="psum")
  assert len(reports) == 2 * len(mixers), reports
  assert all(r.independent_matmuls >= 1 for r in reports), reports


@pytest.mark.slow
def test_trainer_with_a_tensor_parallel_gdn_model_trains_like_one_device(tmp_path):
  ref = _train(tmp_path, "one", mesh=ONE_DEVICE, layer_pattern="gdn", num_layers=1)
  assert len(ref) == 3 and np.isfinite(ref).all()
  tp = _train(tmp_path, "tp", mesh=dict(data=2, tensor=2), layer_pattern="gdn", num_layers=1)
  np.testing.assert_allclose(tp, ref, rtol=2e-5)
