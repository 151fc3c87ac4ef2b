"""Residual modes: ladder == the explicit recurrence, on one device and under TP; hybrid layers;
the PaLM-parallel formula; and the compiled HLO lets each ladder all-reduce overlap matmuls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.models import build_model, ladder
from lloglin.models.decoder import with_residual_mode
from lloglin.parallel import hlo
from tests.parallel.helpers import hidden_on_mesh, on_mesh, tiny_config, tokens


def _modules(model, t):
  """h_1, h_2, ...: every module as x -> output (its norm included), in execution order."""
  B, T = t.shape
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  out = []
  for b in model.blocks:
    out.append(lambda x, b=b: b.mixer(b.mixer_norm(x), segment_ids_BT=None, positions_BT=pos))
    out.append(lambda x, b=b: b.mlp(b.mlp_norm(x)))
  return out


def _recurrence(model, t, first_ladder_module=0):
  """x_i = x_{i-1} + h_i(x_{i-2}) for ladder modules after the first ladder module,
  x_i = x_{i-1} + h_i(x_{i-1}) up to it (nothing is in flight yet), written out sequentially."""
  xs = [model.embed(t)]
  for i, h in enumerate(_modules(model, t)):
    stale = i > first_ladder_module
    xs.append(xs[-1] + h(xs[-2] if stale else xs[-1]))
  return model.final_norm(xs[-1])


def test_ladder_equals_the_explicit_recurrence_on_one_device_and_under_tp():
  model = build_model(tiny_config(residual_mode="ladder", num_kv_heads=4))
  t = tokens()
  expected = _recurrence(model, t)
  np.testing.assert_allclose(model.hidden(t), expected, atol=1e-6, rtol=1e-6)
  standard = with_residual_mode(model, "standard").hidden(t)
  assert np.abs(np.asarray(standard - expected)).max() > 1e-3  # the rewiring matters
  for mesh_shape in (dict(data=1, tensor=8), dict(data=2, tensor=4)):
    np.testing.assert_allclose(hidden_on_mesh(model, mesh_shape, t), expected, atol=1e-5,
                               rtol=1e-5)


def test_hybrid_keeps_lower_layers_standard():
  model = build_model(tiny_config(num_layers=4))
  hybrid = with_residual_mode(model, "ladder", start_layer=2)
  assert hybrid.cfg.residual_start_layer == 2 and hybrid.cfg.residual_mode == "ladder"
  assert hybrid.blocks[3].mlp.down.kernel is model.blocks[3].mlp.down.kernel  # shared weights
  t = tokens()
  np.testing.assert_allclose(hybrid.hidden(t), _recurrence(model, t, first_ladder_module=4),
                             atol=1e-6, rtol=1e-6)


def test_parallel_adds_attention_and_mlp_of_the_same_input():
  model = build_model(tiny_config(residual_mode="parallel", num_layers=2))
  t = tokens()
  hs = _modules(model, t)
  x = model.embed(t)
  for attn, mlp in zip(hs[::2], hs[1::2]):
    x = x + (attn(x) + mlp(x))
  np.testing.assert_allclose(model.hidden(t), model.final_norm(x), atol=1e-6, rtol=1e-6)


def test_desync_wiring_keeps_the_last_all_reduce():
  w = ladder.layer_wirings("desync", 4, desync_every=2, desync_reduce="mlp")
  assert [x.syncs for x in w] == [(False, False), (False, True), (False, False), (False, True)]
  w = ladder.layer_wirings("desync", 3, desync_every=5, desync_reduce="both", start_layer=1)
  assert [x.mode for x in w] == ["standard", "desync", "desync"]
  assert w[-1].syncs == (False, True)


@pytest.mark.parametrize("bad, match", [
    (dict(residual_mode="zigzag"), "model.residual_mode='zigzag'"),
    (dict(residual_start_layer=9), "model.residual_start_layer=9"),
    (dict(desync_reduce="attn"), "model.desync_reduce='attn'"),
    (dict(desync_every=0), "model.desync_every=0"),
])
def test_bad_residual_options_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    tiny_config(**bad)


def _compiled_hidden_hlo(mode, mesh_shape=dict(data=1, tensor=4), model_kw=None,
                         **compiler_options):
  """Optimised HLO of the hidden states of an attention model (or as `model_kw` overrides)."""
  model = build_model(tiny_config(**{**dict(residual_mode=mode, num_kv_heads=4,
                                            attention_impl="xla"), **(model_kw or {})}))
  mesh, graphdef, state = on_mesh(model, mesh_shape)
  with jax.set_mesh(mesh):
    lowered = jax.jit(lambda st, t: nnx.merge(graphdef, st).hidden(t)).lower(state, tokens())
  return lowered.compile(compiler_options=compiler_options or None).as_text()


def test_hlo_ladder_all_reduces_are_free_of_the_next_modules_matmuls():
  """CPU has no asynchronous collectives (no all-reduce-start/done to look at), so this checks
  the property the GPU scheduler needs, on the optimised HLO: every ladder all-reduce has
  matmuls that neither feed it nor wait for it (the next module's), while in standard and
  parallel mode every matmul is upstream or downstream of every all-reduce."""
  ladder_reports = hlo.all_reduce_overlap(_compiled_hidden_hlo("ladder"), match="psum")
  assert len(ladder_reports) == 6  # 3 layers x (attention, MLP): none merged by XLA
  assert all(r.independent_matmuls >= 3 for r in ladder_reports), ladder_reports
  for mode, count in (("standard", 6), ("parallel", 3)):
    reports = hlo.all_reduce_overlap(_compiled_hidden_hlo(mode), match="psum")
    assert len(reports) == count and all(r.independent_matmuls == 0 for r in reports), reports


@pytest.mark.gpu
def test_gpu_hlo_ladder_schedules_matmuls_between_all_reduce_start_and_done():
  if jax.device_count() < 2:
    pytest.skip("needs 2 GPUs for a tensor-parallel program")
  options = dict(xla_gpu_enable_latency_hiding_scheduler=True)
  ladder_reports, standard = [hlo.all_reduce_overlap(
      _compiled_hidden_hlo(mode, dict(data=1, tensor=2), **options), match="psum")
      for mode in ("ladder", "standard")]
  reports = (ladder_reports, standard)
  assert all(r.scheduled_between is not None for r in ladder_reports + standard), reports
  # On 2 x H200 the 1B decode program overlapped 31 of its 32 ladder all-reduces this way.
  assert sum(r.scheduled_between > 0 for r in ladder_reports) >= len(ladder_reports) // 2, reports
  assert all(r.scheduled_between == 0 for r in standard), reports


_ASYNC_HLO = """HloModule m, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_psum (p: f32[4,4]) -> f32[4,4] {
  %p = f32[4,4]{1,0} parameter(0)
  ROOT %ar = f32[4,4]{1,0} all-reduce(%p), to_apply=%add
}

%gemm_computation (l: f32[4,4], r: f32[4,4]) -> f32[4,4] {
  %l = f32[4,4]{1,0} parameter(0)
  %r = f32[4,4]{1,0} parameter(1)
  ROOT %d = f32[4,4]{1,0} dot(%l, %r), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: f32[4,4], w: f32[4,4]) -> (f32[4,4], f32[4,4]) {
  %x = f32[4,4]{1,0} parameter(0)
  %w = f32[4,4]{1,0} parameter(1)
  %fs = ((f32[4,4]), f32[4,4]) fusion-start(%x), calls=%fused_psum, metadata={op_name="psum"}
  %gemm = f32[4,4]{1,0} fusion(%w, %w), kind=kCustom, calls=%gemm_computation
  %fd = f32[4,4]{1,0} fusion-done(%fs), metadata={op_name="psum"}
  %after = f32[4,4]{1,0} fusion(%fd, %w), kind=kCustom, calls=%gemm_computation
  ROOT %t = (f32[4,4]{1,0}, f32[4,4]{1,0}) tuple(%gemm, %after)
}
"""


def test_hlo_reader_sees_matmuls_inside_an_async_all_reduce_as_xla_gpu_emits_it():
  (report,) = hlo.all_reduce_overlap(_ASYNC_HLO, match="psum")
  assert (report.scheduled_between, report.independent_matmuls) == (1, 1)
  serial = _ASYNC_HLO.replace("%gemm = f32[4,4]{1,0} fusion(%w, %w)",
                              "%gemm = f32[4,4]{1,0} fusion(%fd, %w)")
  lines = serial.splitlines()
  i = next(k for k, l in enumerate(lines) if "%gemm =" in l)
  lines[i], lines[i + 1] = lines[i + 1], lines[i]  # the done now comes first
  (report,) = hlo.all_reduce_overlap("\n".join(lines), match="psum")
  assert (report.scheduled_between, report.independent_matmuls) == (0, 0)
