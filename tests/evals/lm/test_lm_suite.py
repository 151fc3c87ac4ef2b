"""The lm suite as `eval.py --suite lm --config configs/lm.py[:variant]` runs it."""

import json

import pytest

from tests.helpers import run_script


@pytest.mark.slow
def test_eval_py_runs_the_lm_suite_on_an_export(tiny_lm_run, tmp_path):
  """:tiny variant and --config overrides on the params-only export, on another text file."""
  other = tmp_path / "other.txt"
  other.write_text("pack my box with five dozen liquor jugs. " * 100)
  out = tmp_path / "out"
  result = run_script("eval.py", "--suite", "lm", "--config", "configs/lm.py:tiny",
                      f"--checkpoint={tiny_lm_run / 'export'}", f"--out={out}",
                      "--config.batch_size=4", f"--config.data_path={other}",
                      "--config.prompt=pack my", "--config.decode_impl=plain")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "lm: validation batches" in result.stderr  # the progress bar
  report = json.loads((out / "report.json").read_text())
  assert report["config"]["num_batches"] == 2 and report["config"]["max_new_tokens"] == 8
  results = report["results"]
  assert results["data"]["source"] == "text" and results["data"]["path"] == str(other)
  assert 0 < results["eval_tokens"] <= 2 * 4 * 32  # num_batches x batch_size x seq_len
  assert len(results["eval_loss_per_position"]) == 32
  assert results["generation"]["prompt"] == "pack my"
  assert 1 <= len(results["generation"]["tokens"]) <= 8
  assert report["figures"] == [results["per_position_plot"]] == ["per_position_loss.png"]
  assert (out / "per_position_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

