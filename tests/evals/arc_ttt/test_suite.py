"""The arc_ttt suite in-process: report, figure, ablations, and a bad task that does not stop
the run."""

import json

import numpy as np

from configs.arc_ttt import get_config
from lloglin import evals
from lloglin.data import arc_grids as grids
from lloglin.data.arc_grids import ArcTask, Example


def transpose_task(task_id, seed):
  """2 x 2 grids (the shared tiny LM reads 64 tokens) whose output is the transposed input."""
  rng = np.random.default_rng(seed)
  pairs = [Example(x, x.T.copy()) for x in (rng.integers(0, 10, (2, 2)).astype(np.int8)
                                           for _ in range(3))]
  return ArcTask(task_id, tuple(pairs[:2]), tuple(pairs[2:]))


def test_suite_runs_ablations_and_reports_a_bad_task(tiny_lm_run, tmp_path):
  tasks_dir = tmp_path / "tasks"
  tasks_dir.mkdir()
  for i in range(2):
    task = transpose_task(f"t{i}", i)
    (tasks_dir / f"{task.id}.json").write_text(json.dumps(grids.task_record(task)))
  bad = grids.task_record(transpose_task("bad", 9))
  bad["train"][0]["input"] = [[1, 2], [3]]
  (tasks_dir / "bad.json").write_text(json.dumps(bad))
  config = get_config("tiny")
  config.tasks.source, config.tasks.path = "json_dir", str(tasks_dir)
  config.ablations = "no_ttt,full,direct_io,shared_then_task"
  config.inference.max_new_tokens = 7  # a 2 x 2 grid and "#"
  out = tmp_path / "out"
  evals.run_suite("arc_ttt", config, checkpoint=str(tiny_lm_run / "export"), out_dir=str(out))
  report = json.loads((out / "report.json").read_text())
  results = report["results"]
  assert results["tasks"] == ["t0", "t1"]
  assert "task 'bad' grid train[0].input: ragged rows" in results["load_errors"]["bad"]
  assert report["figures"] == ["pass_at_2.png"] and results["figure"] == "pass_at_2.png"
  assert (out / "pass_at_2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(results["ranking"]) == ["direct_io", "full", "no_ttt", "shared_then_task"]
  for name, scores in results["ablations"].items():
    assert scores["tasks"] == 3 and not scores["errors"]
    assert 0 <= scores["pass_at_2"] <= scores["oracle"] <= 2 / 3
    for task in scores["per_task"]:
      assert len(task["predictions"]) == 1 and len(task["predictions"][0]) <= 2
      assert set(task["votes"][0]) == {"identity", "transpose"}
      candidates = sum(c["count"] for group in task["votes"][0].values() for c in group)
      # 2 transforms x 2 demonstration orders, or 2 x 1 without demonstrations (direct I/O)
      assert candidates <= (2 if name == "direct_io" else 4)
      assert (task["ttt_episodes"] > 0) == (name != "no_ttt")
      assert task["seconds"] > 0
  assert results["ablations"]["full"]["per_task"][0]["ttt_loss"] > 0
