"""The GPU benchmarks run end to end on CPU at toy sizes (their GPU runs are by hand)."""

import json

import numpy as np
import pytest

from benchmarks import bench_mixers


def test_per_T_runs_rows_tables_memory_skip_and_merge(tmp_path, capsys):
  """One process per T (as on the GPU, each under its own timeout): every timed row is logged at
  once, --skip drops a row, the memory section grows with T, and --merge renders one table and
  plot from the logs."""
  common = ["--tokens", "128", "--mixers", "mamba2,path", "--impls", "xla", "--modes", "fwdbwd",
            "--repeats", "1"]
  first = bench_mixers.main(common + ["--seqlens", "64", "--skip", "lloglin_path[xla]:fwdbwd",
                                      "--memory", "path", "--memory_seqlens", "64,256",
                                      "--out", str(tmp_path / "a")])
  second = bench_mixers.main(common + ["--seqlens", "128", "--out", str(tmp_path / "b")])
  assert [(r["mixer"], r["seq_len"]) for r in first["rows"]] == [("mamba2", 64)]
  assert all(r["mtok_s"] > 0 and r["mode"] == "fwdbwd" for r in first["rows"] + second["rows"])
  out = capsys.readouterr().out
  assert "| mamba2 | xla |" in out and "T=128 fwdbwd" in out
  mem = {m["seq_len"]: m["fwdbwd_gib"] for m in first["memory"]}
  assert 0 < mem[64] < mem[256]
  saved = json.loads((tmp_path / "a" / "bench_mixers_h16d128.json").read_text())
  assert saved["meta"]["tokens_per_call"] == 128
  assert (tmp_path / "b" / "bench_mixers_h16d128.png").exists()
  logs = [str(tmp_path / d / "rows_h16d128.jsonl") for d in ("a", "b")]
  assert [len(open(p).readlines()) for p in logs] == [1, 2]
  result = bench_mixers.main(["--merge", *logs, "--out", str(tmp_path / "m")])
  assert {(r["mixer"], r["seq_len"]) for r in result["rows"]} == {
      ("mamba2", 64), ("mamba2", 128), ("path", 128)}
  assert "| path | xla | - |" in capsys.readouterr().out
  assert (tmp_path / "m" / "bench_mixers_h16d128.png").exists()


def test_kernel_config_sweep_rows(tmp_path, capsys):
  """--kernel_configs: one Pallas row per launch configuration (interpret mode on the CPU),
  each compared with the same XLA row; a malformed list is refused with the reason."""
  result = bench_mixers.main(["--tokens", "64", "--seqlens", "64", "--mixers", "gdn,path",
                              "--impls", "pallas,xla", "--modes", "fwd",
                              "--kernel_configs", "16,4,1,32,4,1", "--repeats", "1",
                              "--out", str(tmp_path)])
  for mixer, tile in (("gdn", "bv"), ("path", "bs")):  # PaTH: the block size comes first
    rows = [r for r in result["rows"] if r["mixer"] == mixer]
    assert sorted(r["impl"] for r in rows) == [f"pallas_{tile}16w4s1", f"pallas_{tile}32w4s1",
                                               "xla"]
    assert all(r["mtok_s"] for r in rows), rows
  out = capsys.readouterr().out
  assert out.count("| gdn | 64 | fwd |") == 2 and "(pallas_bv16w4s1) |" in out
  xla_column = [line.split("|")[5].strip() for line in out.splitlines()
                if line.startswith("| gdn | 64 | fwd |")]
  assert all(v != "-" for v in xla_column)
  with pytest.raises(SystemExit):
    bench_mixers.main(["--kernel_configs", "16,4"])
  assert "triples" in capsys.readouterr().err

def test_linear_memory_impl_times_path_only(tmp_path, capsys):
  """--impls pallas_linear_memory (opt-in): a PaTH row and a PaTH memory row under that label;
  mixers without the variant get none."""
  result = bench_mixers.main(["--tokens", "32", "--seqlens", "32", "--mixers", "mamba2,path",
                              "--impls", "pallas_linear_memory", "--modes", "fwd", "--memory",
                              "path", "--memory_seqlens", "32", "--repeats", "1",
                              "--out", str(tmp_path)])
  assert [(r["mixer"], r["impl"]) for r in result["rows"]] == [("path", "pallas_linear_memory")]
  assert result["rows"][0]["mtok_s"] > 0
  assert [(m["impl"], m["seq_len"]) for m in result["memory"]] == [("pallas_linear_memory", 32)]
  assert result["memory"][0]["fwdbwd_gib"] > 0
  assert "ROW lloglin_path[pallas_linear_memory]" in capsys.readouterr().out


def test_gdn_rows_take_the_mosaic_scans_on_hopper_and_pallas_triton_does_not(monkeypatch):
  """On a Hopper GPU the default `pallas` GDN row runs the kernels of chunkwise.AUTO_MOSAIC on
  Mosaic GPU (the launch default, backend='auto'), the opt-in `pallas_triton` row none and the
  opt-in `pallas_mosaic` row all six (traced only, the GPU stood in for by on_hopper_gpu: the
  interpreter would take minutes per timed row); `pallas_mosaic` runs Mamba-2's and log-linear
  Mamba-2's level scans, PaTH's kernels and log-linear GDN's GDN runs on Mosaic GPU; mixers
  without the variants have no such rows."""
  import jax

  from pallas_kernels.gdn import chunkwise
  monkeypatch.setattr(chunkwise, "on_hopper_gpu", lambda: True)
  x = jax.eval_shape(lambda: bench_mixers.jax_inputs(256, 256, 4, 64, jax.random.key(0)))
  kernels = ("ut_transform", "state_scan", "output", "output_bwd", "state_scan_bwd", "chunk_bwd")
  for impl, on_mosaic in (("pallas", chunkwise.AUTO_MOSAIC), ("pallas_triton", ()),
                          ("pallas_mosaic", kernels)):
    fn, args = bench_mixers.jax_case("gdn", impl, x, interpret=False)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).astype(float).sum()))(*args))
    for kernel in kernels:   # e.g. gdn_output, or gdn_output_mgpu on Mosaic GPU
      assert f"gdn_{kernel}" in jaxpr, (impl, kernel)
      assert (f"gdn_{kernel}_mgpu" in jaxpr) == (kernel in on_mosaic), (impl, kernel)
  for mixer in ("mamba2", "loglinear_mamba2"):   # their level scan on Mosaic GPU, opt-in
    fn, args = bench_mixers.jax_case(mixer, "pallas_mosaic", x, interpret=False)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).astype(float).sum()))(*args))
    for direction in ("fwd", "rev"):   # every pass on the Mosaic kernel, none on Triton's
      assert f"level_scan_mgpu_{direction}" in jaxpr, mixer
      assert f"level_scan_{direction}" not in jaxpr, mixer
    with pytest.raises(ImportError, match="pallas_triton"):    # Triton is their default
      bench_mixers.jax_case(mixer, "pallas_triton", x)
  fn, args = bench_mixers.jax_case("path", "pallas_mosaic", x, interpret=False)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).astype(float).sum()))(*args))
  for kernel in ("fwd", "bwd_dq", "bwd_dkv"):      # PaTH's three kernels on Mosaic GPU
    assert f"path_attention_{kernel}_mgpu" in jaxpr, kernel
  # log-linear GDN's levels above the chunk: one UT transform, then GDN's packed kernels, on
  # Mosaic GPU with pallas_mosaic but chunk_bwd (its dT-only form: Triton); the opt-in
  # pallas_level_scan row runs the level-stream scans instead
  fn, args = bench_mixers.jax_case("loglinear_gdn", "pallas_mosaic", x, interpret=False)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).astype(float).sum()))(*args))
  assert "gdn_ut_transform_mgpu" in jaxpr and "gdn_packed_chunk_bwd_dt" in jaxpr
  assert all(f"gdn_packed_{kernel}_mgpu" in jaxpr for kernel in kernels[1:5])
  fn, args = bench_mixers.jax_case("loglinear_gdn", "pallas_level_scan", x, interpret=False)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: fn(*a).astype(float).sum()))(*args))
  assert "loglinear_gdn_chunk_scan" in jaxpr and "gdn_packed_output" not in jaxpr
  for mixer, impl in (("path", "pallas_triton"), ("gdn", "pallas_level_scan")):
    with pytest.raises(ImportError, match=impl):
      bench_mixers.jax_case(mixer, impl, x)


def test_bad_arguments_name_the_problem(capsys):
  for argv, message in ((["--mixers", "mamba3"], "unknown ['mamba3']"),
                        (["--repeats", "0"], "--repeats=0"),
                        (["--seqlens", "1000"], "does not divide")):
    with pytest.raises(SystemExit):
      bench_mixers.main(argv)
    assert message in capsys.readouterr().err


def test_train_step_benchmark_smoke(capsys):
  """The Transformer's row (a sequence mixer's: the memory-accounting test below)."""
  from benchmarks import bench_train_step
  rows = bench_train_step.main(["--size", "smoke", "--seq_len", "32", "--tokens", "64",
                                "--steps", "1", "--archs", "transformer"])
  (t,) = rows
  assert t["arch"] == "transformer" and t["tokens_per_s"] > 0 and 0 < t["mfu"] < 1
  # The Transformer's model FLOPs include its attention term on top of 6 x matmul parameters.
  assert t["tokens_per_s"] * 6 * t["matmul_params"] < t["mfu"] * 989e12
  # a fresh batch of uniform random tokens per step: a causal model stays near ln(vocab)
  assert t["loss"] > t["loss_uniform"] - 0.5, (t["loss"], t["loss_uniform"])
  assert "| transformer |" in capsys.readouterr().out


def test_train_step_benchmark_memory_accounting(capsys):
  """--memory: per block (and mixer branch) what autodiff keeps, XLA's compiled memory of one
  block and of the step, per --remat policy; 'block' keeps less than 'none'."""
  from benchmarks import bench_train_step
  rows = bench_train_step.main(["--size", "smoke", "--seq_len", "32", "--tokens", "64",
                                "--steps", "1", "--archs", "loglinear_mamba2", "--remat",
                                "none,block", "--memory"])
  none, block = rows
  assert (none["remat"], block["remat"]) == ("none", "block")
  assert 0 < block["block_saved_gib"] < none["block_saved_gib"]
  assert 0 < none["mixer_saved_gib"] <= none["block_saved_gib"]
  for r in rows:
    step = r["step_compiled"]
    assert step["temp"] > 0 and step["peak"] >= step["argument"] > 0
    assert r["block_fwdbwd_peak_gib"] > 0 and r["tokens_per_s"] > 0
  out = capsys.readouterr().out
  assert "## memory of one loglinear_mamba2 block (remat=block, B=2, T=32" in out
  assert "| saved by | GiB | arrays | largest |" in out and "| block | standard |" in out
  with pytest.raises(SystemExit):
    bench_train_step.main(["--remat", "sometimes"])
  assert "unknown ['sometimes']" in capsys.readouterr().err


def test_tp_decode_benchmark_modes_nocomm_and_plot(tmp_path, monkeypatch, capsys):
  """All four modes on 8 fake devices: `nocomm` keeps only the final all-reduce; the rows come
  back from the JSON lines with the same table, and the plot is written."""
  from benchmarks import bench_tp_decode
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  out, png = tmp_path / "rows.jsonl", tmp_path / "tp.png"
  rows = bench_tp_decode.main(["--smoke", "--batches", "2", "--out", str(out), "--plot",
                               str(png)])
  by_mode = {r["mode"]: r for r in rows}
  assert list(by_mode) == ["standard", "ladder", "parallel", "nocomm"]
  assert all(r["tokens_per_s"] > 0 and r["tp"] == 8 for r in rows)
  assert by_mode["standard"]["all_reduces"] == 2 * bench_tp_decode.SHAPES["tiny"]["num_layers"]
  assert by_mode["nocomm"]["all_reduces"] == 1
  assert png.stat().st_size > 0
  table = capsys.readouterr().out.split("| model |")[1]
  assert "ladder / standard | nocomm / standard" in table and "| tiny | 2 |" in table
  png.unlink()
  again = bench_tp_decode.main(["--from_jsonl", str(out), "--plot", str(png)])
  assert again == rows and png.exists()
  assert capsys.readouterr().out.split("| model |")[1] == table


def test_train_step_benchmark_on_a_data_x_tensor_mesh(capsys):
  from benchmarks import bench_train_step
  rows = bench_train_step.main(["--size", "smoke", "--seq_len", "32", "--tokens", "128",
                                "--steps", "1", "--archs", "transformer", "--dtype", "float32",
                                "--mesh", "data=2,tensor=2", "--residual_modes",
                                "standard,ladder"])
  assert [r["residual_mode"] for r in rows] == ["standard", "ladder"]
  assert all(r["mesh"] == "data=2,fsdp=1,tensor=2" and r["devices"] == 4 for r in rows)
  assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
             for r in rows)
  ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
  assert f"| x{ratio:.3f} |" in capsys.readouterr().out


@pytest.mark.parametrize("module, argv, message", [
    ("bench_tp_decode", ["--modes", "standard,sync"], "unknown ['sync']"),
    ("bench_train_step", ["--mesh", "data:2"], "is not axis=size"),
    ("bench_train_step", ["--mesh", "data=3,tensor=4"], "needs 12 devices"),
    ("bench_train_step", ["--residual_modes", "rungs"], "unknown ['rungs']"),
])
def test_tp_benchmarks_name_bad_arguments(module, argv, message, capsys):
  import importlib
  with pytest.raises(SystemExit):
    importlib.import_module(f"benchmarks.{module}").main(argv)
  assert message in capsys.readouterr().err


def test_triton_resources_captures_every_kernel_of_forward_and_backward():
  """The modules triton_resources.py hands to the triton package (which CI lacks): log-linear
  GDN's forward and backward level-stream scans (the pallas_level_scan row) and the UT inverse
  with its transpose, lowered for CUDA on this CPU."""
  from benchmarks import triton_resources
  modules = triton_resources.triton_modules("loglinear_gdn", "h16d128", 2048, "pallas_level_scan")
  names = sorted(m.split("module @", 1)[1].split()[0] for m in modules)
  assert names == ["gdn_ut_inverse", "gdn_ut_inverse_bwd", "loglinear_gdn_chunk_scan",
                   "loglinear_gdn_chunk_scan_bwd"]
  assert all("tt.func" in m for m in modules)


def test_gdn_kernel_breakdown_times_every_kernel_and_the_whole(capsys):
  """bench_gdn_kernels (interpret mode, toy size): one row per chunkwise kernel and the whole
  fwd+bwd, every time positive, the remainder printed as 'outside the kernels'."""
  from benchmarks import bench_gdn_kernels
  results = bench_gdn_kernels.main(["--interpret", "--tokens", "128", "--seqlens", "128",
                                    "--heads", "1", "--dim", "16", "--repeats", "1",
                                    "--backends", "triton"])
  rows = results[128, "triton"]
  assert [name for name, _ in rows] == list(bench_gdn_kernels.KERNELS) + ["fwd+bwd"]
  assert all(ms > 0 for _, ms in rows)
  assert "outside the kernels" in capsys.readouterr().out


def test_gdn_kernel_breakdown_names_the_kernels_mosaic_runs_faster(capsys):
  """With both backends timed, the kernels Mosaic ran faster at every T are listed (what
  chunkwise.AUTO_MOSAIC would hold by that run); one slower T keeps a kernel off the list."""
  from benchmarks import bench_gdn_kernels
  names = bench_gdn_kernels.KERNELS
  triton = {T: [(n, 2.0) for n in names] for T in (2048, 8192)}
  mosaic = {2048: [(n, 1.0) for n in names],
            8192: [(n, 3.0 if n == "output" else 1.0) for n in names]}
  results = {(T, b): times[T] for b, times in (("triton", triton), ("mosaic", mosaic))
             for T in (2048, 8192)}
  bench_gdn_kernels.print_faster(results, (2048, 8192))
  out = capsys.readouterr().out
  assert "output: Mosaic speed-up over Triton 2.00x (T=2048) / 0.67x (T=8192)" in out
  faster = tuple(n for n in names if n != "output")
  assert f"faster on Mosaic GPU at every T: {faster}" in out
