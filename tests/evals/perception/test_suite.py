"""The perception suite end to end (synthetic set, measure and oracle judges) and the loaders of
image folders with a scores CSV."""

import json

import numpy as np
import pytest
from PIL import Image

from configs.perception import get_config
from lloglin.evals import run_suite
from lloglin.evals.perception import data
from tests.helpers import run_script

PNG = b"\x89PNG\r\n\x1a\n"


def test_suite_on_synthetic_set(tmp_path):
  config = get_config("tiny")
  run_suite("perception", config, out_dir=str(tmp_path))
  saved = json.loads((tmp_path / "report.json").read_text())
  assert sorted(saved["figures"]) == ["correlations.png", "scores.png"]
  for name in saved["figures"]:
    assert (tmp_path / name).read_bytes()[:8] == PNG
  res = saved["results"]
  assert res["num_pairs"] == 12 * 11 // 2
  clutter = res["principles"]["clutter"]
  assert clutter["srocc_true_level"] > 0.7 and not clutter["failures"]
  assert clutter["correlations"]["all"]["n"] == 12
  assert len(clutter["disagreements"]) == 10 and "srocc_true_level" not in \
      res["principles"]["simplicity"]


def test_oracle_recovers_levels(tmp_path):
  config = get_config("oracle")
  config.perception.update(num_images=16, flip=0.0, pairs_per_image=6)
  results = run_suite("perception", config, out_dir=str(tmp_path))["results"]
  for name in ("clutter", "symmetry"):
    assert results["principles"][name]["srocc_true_level"] > 0.95
  with pytest.raises(ValueError, match="unknown variant 'x'"):
    get_config("x")
  config.perception.principles = ("closure",)
  with pytest.raises(ValueError, match=r"no true level of \['closure'\]"):
    run_suite("perception", config, out_dir=str(tmp_path))
  config.perception.judge = "measure"
  with pytest.raises(ValueError, match=r"\['closure'\] have no computed measure"):
    run_suite("perception", config, out_dir=str(tmp_path))


def _save(path, array):
  Image.fromarray(array).save(path)


def test_folder_loader(tmp_path):
  rng = np.random.default_rng(0)
  _save(tmp_path / "rgb.png", rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
  _save(tmp_path / "grey.png", rng.integers(0, 256, (50, 50), dtype=np.uint8))
  csv = tmp_path / "scores.csv"
  csv.write_text("image,score,category\nrgb.png,0.5,ads\ngrey.png,2,art\n")
  items = data.load_folder(str(tmp_path), str(csv), category_column="category", max_side=64)
  assert [it.image.shape for it in items] == [(32, 64, 3), (64, 64, 3)]
  assert [(it.human, it.category) for it in items] == [(0.5, "ads"), (2.0, "art")]

  _save(tmp_path / "extra.png", np.zeros((40, 40, 3), np.uint8))
  with pytest.raises(ValueError, match=r"have no score, e.g. \['extra.png'\]"):
    data.load_folder(str(tmp_path), str(csv))
  (tmp_path / "extra.png").unlink()
  _save(tmp_path / "tiny.png", np.zeros((8, 40, 3), np.uint8))
  (tmp_path / "broken.png").write_bytes(b"not an image")
  for row, error, match in (("tiny.png,1", ValueError, "tiny.png.*too small"),
                            ("broken.png,1", ValueError, "broken.png.*unreadable"),
                            ("gone.png,1", FileNotFoundError, "gone.png"),
                            ("rgb.png,high", ValueError, "row 1 .*score 'high' is not a number")):
    (tmp_path / "one.csv").write_text(f"image,score\n{row}\n")
    with pytest.raises(error, match=match):
      data.load_folder(str(tmp_path), str(tmp_path / "one.csv"))


def test_ic9600_layout(tmp_path):
  for name in ("abstract_1.png", "paint_2.png"):
    _save(tmp_path / name, np.full((40, 40, 3), 9, np.uint8))
  (tmp_path / "test.txt").write_text("abstract_1.png  0.25\npaint_2.png  0.5\n")
  items = data.load_folder(str(tmp_path), str(tmp_path / "test.txt"), layout="ic9600",
                           category_column="name_prefix")
  assert [(it.id, it.human, it.category) for it in items] == [("abstract_1.png", 0.25, "abstract"),
                                                              ("paint_2.png", 0.5, "paint")]
  (tmp_path / "test.txt").write_text("abstract_1.png\n")
  with pytest.raises(ValueError, match="test.txt line 1: expected 'image_name score'"):
    data.load_folder(str(tmp_path), str(tmp_path / "test.txt"), layout="ic9600")


def test_suite_on_a_folder_per_category(tmp_path):
  rng = np.random.default_rng(1)
  lines = ["image,score,category"]
  for k in range(8):  # more random pixels, more edges: the human score follows the clutter
    image = np.full((40, 40, 3), 255, np.uint8)
    image[:5 * (k + 1)] = rng.integers(0, 256, (5 * (k + 1), 40, 3), dtype=np.uint8)
    _save(tmp_path / f"{k}.png", image)
    lines.append(f"{k}.png,{k},{'ads' if k % 2 else 'art'}")
  (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
  config = get_config("tiny")
  config.perception.update(image_dir=str(tmp_path), scores_csv=str(tmp_path / "scores.csv"),
                           category_column="category", principles=("clutter",))
  res = run_suite("perception", config, out_dir=str(tmp_path / "out"))["results"]
  corr = res["principles"]["clutter"]["correlations"]
  assert set(corr) == {"all", "ads", "art"} and corr["all"]["srocc"] > 0.9
  assert (tmp_path / "out" / "scores.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_eval_py_runs_perception(tmp_path):
  result = run_script("eval.py", "--suite", "perception", "--config",
                      "configs/perception.py:oracle", f"--out={tmp_path}",
                      "--config.perception.num_images=8")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "judging symmetry" in result.stderr  # the progress bar
  report = json.loads((tmp_path / "report.json").read_text())
  assert list(report["results"]["principles"]) == ["clutter", "symmetry"]
  assert report["figures"] == ["correlations.png", "scores.png"]
