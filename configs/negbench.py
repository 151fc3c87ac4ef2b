"""NegBench (arXiv 2501.09425): the settings of the `negbench` suite (docs/suites/negbench.md).

  python eval.py --suite negbench --config configs/negbench.py --checkpoint RUN

evaluates a dual encoder on the synthetic scenes' test split; `--config.negbench.mcq_csv=...`,
`retrieval_csv`, `negated_retrieval_csv` and `image_root` evaluate it on the released NegBench
CSVs instead. Variants: default | tiny (a small test set: seconds on a CPU).
"""

import ml_collections

from configs.base import get_base_config

VARIANTS = ("default", "tiny")


def add_suite_config(c: ml_collections.ConfigDict, *, tiny: bool = False):
  """Sets c.suite = "negbench" and the suite's settings c.negbench; returns c."""
  c.suite = "negbench"
  n = c.negbench = ml_collections.ConfigDict()
  n.encoder = ""  # "" = the checkpoint's dual encoder, or "module:function" (called with these)
  n.seed = 0  # the test scenes, questions and negated objects
  n.num_images = 1000  # test scenes (retrieval gallery; one MCQ block per image)
  n.questions_per_image = 1  # MCQ questions per scene, each with its own negated object (1..3)
  n.batch_size = 256  # images or texts per encoder call
  n.mcq_csv = ""  # a released MCQ CSV (image_path, caption_0..3, correct_answer, ..._template)
  n.retrieval_csv = ""  # a released retrieval CSV (filepath, captions): the original captions
  n.negated_retrieval_csv = ""  # ... and its negated version
  n.image_root = ""  # the folder the CSVs' image paths are relative to
  n.convert_rgb = False  # convert greyscale / RGBA images instead of refusing them
  n.probe_objects = ()  # object names of the PCA probe (empty = the scenes' classes)
  if tiny:
    n.num_images = 48
    n.batch_size = 32
  return c


def get_config(arg: str | None = None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/negbench.py; valid: {VARIANTS}")
  return add_suite_config(get_base_config(), tiny=variant == "tiny")
