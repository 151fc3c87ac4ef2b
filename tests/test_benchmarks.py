"""The GPU benchmarks run end to end on CPU at toy sizes (their GPU runs are by hand)."""

import json

import pytest

from benchmarks import bench_mixers


def test_smoke_rows_tables_and_memory(tmp_path, capsys):
  result = bench_mixers.main(["--tokens", "128", "--seqlens", "64,128", "--mixers",
                              "mamba2,path", "--impls", "xla", "--modes", "fwdbwd",
                              "--memory", "path", "--memory_seqlens", "64,256",
                              "--out", str(tmp_path)])
  rows = result["rows"]
  assert {(r["mixer"], r["seq_len"]) for r in rows} == {
      (m, T) for m in ("mamba2", "path") for T in (64, 128)}
  assert all(r["mtok_s"] > 0 and r["mode"] == "fwdbwd" for r in rows)
  out = capsys.readouterr().out
  assert "| mamba2 | xla |" in out and "T=128 fwdbwd" in out
  mem = {m["seq_len"]: m["fwdbwd_gib"] for m in result["memory"]}
  assert 0 < mem[64] < mem[256]
  saved = json.loads((tmp_path / "bench_mixers_h16d128.json").read_text())
  assert saved["meta"]["tokens_per_call"] == 128
  assert (tmp_path / "bench_mixers_h16d128.png").exists()


def test_bad_arguments_name_the_problem(capsys):
  for argv, message in ((["--mixers", "mamba3"], "unknown ['mamba3']"),
                        (["--seqlens", "1000"], "does not divide")):
    with pytest.raises(SystemExit):
      bench_mixers.main(argv)
    assert message in capsys.readouterr().err


def test_train_step_benchmark_smoke(capsys):
  from benchmarks import bench_train_step
  rows = bench_train_step.main(["--size", "smoke", "--seq_len", "32", "--tokens", "64",
                                "--steps", "1", "--archs", "transformer,loglinear_mamba2"])
  assert [r["arch"] for r in rows] == ["transformer", "loglinear_mamba2"]
  assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
  # The Transformer's model FLOPs include its attention term on top of 6 x matmul parameters.
  t = rows[0]
  assert t["tokens_per_s"] * 6 * t["matmul_params"] < t["mfu"] * 989e12
  assert "| loglinear_mamba2 |" in capsys.readouterr().out
