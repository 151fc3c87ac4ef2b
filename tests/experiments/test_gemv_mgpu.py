"""The Mosaic GPU batch-1 GEMV experiment (experiments/gemv_mgpu): the kernel in Mosaic GPU's
interpreter against a float64 product, bad sizes refused, lowering for CUDA on the CPU, and its
benchmark end to end on the CPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.gemv_mgpu import bench_gemv
from experiments.gemv_mgpu.gemv_mgpu import gemv


@pytest.mark.parametrize("N, D, rows, tk, splits, stages", [
    (128, 512, 64, 128, 2, 2),   # two row blocks, two column splits of two tiles
    (128, 256, 128, 64, 1, 4),   # more stages than tiles in flight at the end
])
def test_interpret_matches_float64(N, D, rows, tk, splits, stages):
  rng = np.random.default_rng(N + D)
  w, x = rng.standard_normal((N, D)), rng.standard_normal(D)
  out = jax.jit(functools.partial(gemv, rows=rows, tk=tk, splits=splits, stages=stages,
                                  interpret=True))(jnp.asarray(w, jnp.bfloat16),
                                                   jnp.asarray(x, jnp.bfloat16))
  ref = (w.astype(jnp.bfloat16).astype(np.float64) @ x.astype(jnp.bfloat16).astype(np.float64))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=0,
                             atol=1e-5 * np.abs(ref).max())


def test_bad_sizes_name_the_problem():
  w, x = jnp.zeros((96, 256), jnp.bfloat16), jnp.zeros((256,), jnp.bfloat16)
  with pytest.raises(ValueError, match="rows"):
    gemv(w, x, interpret=True)
  with pytest.raises(ValueError, match="tk \\* splits"):
    gemv(jnp.zeros((64, 256), jnp.bfloat16), x, tk=128, splits=3, interpret=True)
  with pytest.raises(ValueError, match="x_D"):
    gemv(jnp.zeros((64, 256), jnp.bfloat16), x[:128], interpret=True)


def test_lowers_for_cuda():
  sd = jax.ShapeDtypeStruct
  f = functools.partial(gemv, rows=128, tk=128, splits=4, stages=6)  # 192 KB of tiles
  text = jax.jit(f).trace(sd((2048, 4096), jnp.bfloat16), sd((4096,), jnp.bfloat16)).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text


@pytest.mark.gpu
def test_gpu_matches_xla():
  """On a Hopper GPU at the 1.24B model's down projection: within 1e-3 of XLA's float32 GEMV."""
  w = jax.random.normal(jax.random.key(0), (2048, 8192), jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (8192,), jnp.bfloat16)
  ref = jnp.dot(w, x, preferred_element_type=jnp.float32)
  for rows, tk, splits, stages in ((64, 128, 2, 4), (128, 128, 1, 6)):
    out = jax.jit(functools.partial(gemv, rows=rows, tk=tk, splits=splits, stages=stages))(w, x)
    assert float(jnp.abs(out - ref).max()) <= 1e-3 * float(jnp.abs(ref).max())


def test_gemv_benchmark_smoke(capsys):
  """bench_gemv --smoke: XLA and the Mosaic GPU kernel (interpreter) checked and timed; a config
  that does not fit the shape is reported and skipped, not fatal."""
  rows = bench_gemv.main(["--smoke", "--configs", "64,128,2,2,96,128,1,2"])
  assert [(r["impl"], r["config"]) for r in rows] == [("xla", None),
                                                      ("mosaic_gemv", (64, 128, 2, 2))]
  assert all(r["max_rel_err"] <= 1e-2 and r["us"] > 0 for r in rows)
  assert "SKIP toy mosaic_gemv (96, 128, 1, 2): ValueError: rows" in capsys.readouterr().out
