"""lloglin.evals: suites by name, the checks before a run, and the report every run writes."""

import datetime
import json

import jax
import ml_collections
import numpy as np
import pytest
from matplotlib.figure import Figure

from lloglin import evals
from lloglin.evals import registry


@pytest.fixture
def toy_suite(monkeypatch):
  """Registers suite 'toy' (undone after the test): a PNG, numpy and jax values in its results."""
  monkeypatch.setattr(registry, "_SUITES", dict(registry._SUITES))

  @evals.register_suite("toy")
  def run(config, *, checkpoint, out_dir):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    evals.save_figure(fig, f"{out_dir}/curve.png")
    return {"checkpoint_seen": checkpoint, "mean": np.float32(config.scale) * 2,
            "values": jax.numpy.arange(3) * config.scale}

  return run


def toy_config(**kw):
  return ml_collections.ConfigDict(dict(suite="toy", scale=2, **kw))


def test_unknown_suite_names_the_known_ones():
  assert "lm" in evals.suite_names()
  with pytest.raises(ValueError, match=r"unknown suite 'nope'; known suites: .*\blm\b"):
    evals.get_suite("nope")


def test_lm_package_registers_the_lm_suite():
  suite = evals.get_suite("lm")
  assert suite.name == "lm" and suite.needs_checkpoint
  assert suite.run.__module__ == "lloglin.evals.lm.suite"


def test_report_holds_config_environment_results_and_new_figures(toy_suite, tmp_path):
  (tmp_path / "stale.png").write_bytes(b"from an earlier run")
  report = evals.run_suite("toy", toy_config(), out_dir=str(tmp_path))
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["suite"] == "toy" and saved["checkpoint"] is None
  assert saved["config"] == {"suite": "toy", "scale": 2}
  assert saved["results"] == {"checkpoint_seen": None, "mean": 4.0, "values": [0, 2, 4]}
  assert saved["figures"] == ["curve.png"] == report["figures"]
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  env = saved["environment"]
  assert env["packages"]["jax"] == jax.__version__ and env["backend"] == jax.default_backend()
  age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(env["date"])
  assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
  # A second run into the same folder rewrites curve.png: it is this run's figure again.
  assert evals.run_suite("toy", toy_config(), out_dir=str(tmp_path))["figures"] == ["curve.png"]


def test_run_checks_the_config_and_the_checkpoint(toy_suite, tmp_path):
  with pytest.raises(ValueError, match=r"config: expected a config of suite 'toy'.*suite='lm'"):
    evals.run_suite("toy", ml_collections.ConfigDict({"suite": "lm"}), out_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"checkpoint: suite 'lm' evaluates a trained model"):
    evals.run_suite("lm", ml_collections.ConfigDict({"suite": "lm"}), out_dir=str(tmp_path))
  assert not list(tmp_path.iterdir())  # nothing written before the checks pass


def test_registering_a_taken_name_or_a_bad_name_fails(toy_suite):
  with pytest.raises(ValueError, match=r"suite 'toy' is already registered by .*toy_suite"):
    evals.register_suite("toy")(lambda config, *, checkpoint, out_dir: {})
  with pytest.raises(ValueError, match=r"identifier.*'my-suite'"):
    evals.register_suite("my-suite")


def test_report_refuses_values_json_cannot_hold_and_writes_nothing(tmp_path):
  with pytest.raises(TypeError, match="object"):
    evals.write_report(str(tmp_path), suite="toy", config=toy_config(), results={"x": object()})
  assert not (tmp_path / "report.json").exists()  # no half-written report
