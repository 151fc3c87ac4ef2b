"""The NegBench CSV loaders: the released layout, and an error naming the row for each bad input;
then the suite on CSVs end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from configs.negbench import get_config
from lloglin.data.scenes import make_scenes
from lloglin.evals import run_suite
from lloglin.evals.negbench.data import load_csv_images, load_mcq_csv, load_retrieval_csv
from tests.evals.negbench.test_suite import FAKE

MCQ_HEADER = "image_path,caption_0,caption_1,caption_2,caption_3,correct_answer,"\
             "correct_answer_template\n"


def write(path, text):
  path.write_text(text)
  return str(path)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
  """Two scenes: a.png (64 x 48 RGB, so it is cropped and resized) and b.npy (32 x 32)."""
  root = tmp_path_factory.mktemp("images")
  scenes = make_scenes(2, seed=5)
  big = np.kron(scenes.images_NHWC[0], np.ones((2, 2, 1)))
  padded = np.concatenate([np.zeros((8, 64, 3)), big, np.zeros((8, 64, 3))])  # 80 x 64
  Image.fromarray(np.round(padded * 255).astype(np.uint8)).save(root / "a.png")
  np.save(root / "b.npy", scenes.images_NHWC[1])
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "grey.png")
  np.save(root / "rgba.npy", np.zeros((4, 4, 4), np.float32))
  return root, scenes


def test_released_layout(tmp_path, image_root):
  root, scenes = image_root
  mcq = write(tmp_path / "mcq.csv", MCQ_HEADER
              + "a.png,This image features a dog.,x,y,z,0,affirmation\n"
              + 'b.npy,"No cat, no dog.",q,,r,3,negative\n')
  questions = load_mcq_csv(mcq)
  assert questions[0] == {"image_path": "a.png", "options": ["This image features a dog.", "x",
                                                              "y", "z"],
                          "answer": 0, "type": "affirmation"}
  assert questions[1]["options"] == ["No cat, no dog.", "q", "r"]
  assert questions[1]["answer"] == 2 and questions[1]["type"] == "negation"
  images, index = load_csv_images(questions + questions[:1], mcq, str(root), 32)
  assert images.shape == (2, 32, 32, 3) and list(index) == [0, 1, 0]
  np.testing.assert_allclose(images[1], scenes.images_NHWC[1], atol=1 / 255)
  assert np.abs(images[0] - scenes.images_NHWC[0]).mean() < 0.03  # cropped, then halved
  retrieval = write(tmp_path / "r.csv", "filepath,captions\n"
                    "a.png,\"['a dog', 'two dogs']\"\n")
  assert load_retrieval_csv(retrieval) == [{"image_path": "a.png",
                                            "captions": ["a dog", "two dogs"]}]


@pytest.mark.parametrize("rows,message", [
    ("image_path,caption_0,caption_1,correct_anser\na.png,o,o,0\n",
     r"row 0 \(the header\): missing column\(s\) \['correct_answer'\]"),
    (MCQ_HEADER + "a.png,o,o,o,o,0,hybrid\nb.npy,,,,,0,hybrid\n", "row 2 .*option set is empty"),
    (MCQ_HEADER + "a.png,o,o,o,o,4,hybrid\n", r"row 1 .*correct_answer='4' names no"),
    (MCQ_HEADER + "a.png,o,o,o,o,1,double\n", "row 1 .*correct_answer_template='double'"),
    (MCQ_HEADER + ",o,o,o,o,1,hybrid\n", "row 1 .*'image_path' is empty"),
])
def test_bad_mcq_rows(tmp_path, rows, message):
  with pytest.raises(ValueError, match=message):
    load_mcq_csv(write(tmp_path / "m.csv", rows))


def test_bad_retrieval_rows_and_images(tmp_path, image_root):
  root, _ = image_root
  with pytest.raises(ValueError, match="missing column 'filepath'"):
    load_retrieval_csv(write(tmp_path / "r.csv", "path,captions\na.png,\"['x']\"\n"))
  with pytest.raises(ValueError, match=r"row 2 \(line 3\): captions='\[\]'"):
    load_retrieval_csv(write(tmp_path / "r.csv", "filepath,captions\na.png,\"['x']\"\n"
                             "a.png,[]\n"))
  for name, shape in (("grey.png", r"\(4, 4\)"), ("rgba.npy", r"\(4, 4, 4\)")):
    items = [{"image_path": "a.png"}, {"image_path": name}]
    with pytest.raises(ValueError, match=f"q.csv row 2 .*{name}' has shape {shape}"):
      load_csv_images(items, "q.csv", str(root), 32)
  grey = load_csv_images([{"image_path": "grey.png"}], "q.csv", str(root), 8, convert_rgb=True)
  assert grey[0].shape == (1, 8, 8, 3)
  with pytest.raises(FileNotFoundError, match="q.csv row 1 .*no such image file"):
    load_csv_images([{"image_path": "missing.png"}], "q.csv", str(root), 32)
  with pytest.raises(FileNotFoundError, match="mcq_csv: no such file"):
    load_mcq_csv(str(tmp_path / "none.csv"))


def test_suite_on_csvs(tmp_path, image_root):
  root, scenes = image_root
  objects = [" and ".join(f"a {o}" for o in objs) for objs in scenes.objects]
  mcq = write(tmp_path / "mcq.csv", MCQ_HEADER
              + f"a.png,This image features {objects[0]}.,No.,x,y,0,affirmation\n"
              + f"b.npy,This image features {objects[1]}.,No.,x,y,0,hybrid\n")
  retrieval = write(tmp_path / "r.csv", "filepath,captions\n"
                    + "".join(f"{p},\"['{o}', 'A photo of {o}']\"\n"
                              for p, o in zip(("a.png", "b.npy"), objects)))
  config = get_config("tiny")
  config.negbench.update(encoder=FAKE, mcq_csv=mcq, retrieval_csv=retrieval,
                         image_root=str(root), probe_objects=("dog", "cat"))
  run_suite("negbench", config, out_dir=str(tmp_path / "out"))
  results = json.loads((tmp_path / "out" / "report.json").read_text())["results"]
  assert results["mcq"]["accuracy"] == 1.0 and results["mcq"]["num_options"] == 4
  assert results["mcq"]["count"] == {"affirmation": 1, "negation": 0, "hybrid": 1}
  assert results["retrieval"]["original"]["R@1"] == 1.0
  assert results["retrieval"]["num_queries"] == 4 and "negated" not in results["retrieval"]
