"""NegBench (arXiv 2501.09425): a tiny CLIP-style dual encoder on the synthetic scenes, pretrained
on affirmative captions and fine-tuned on negated ones, and the settings of the `negbench` suite
that evaluates it (docs/suites/negbench.md).

One file for both command lines (train.py reads the training sections, eval.py `suite` and
`negbench`; each ignores the other's keys):

  python train.py --config configs/negbench.py:pretrain --workdir runs/nb_pretrain
  python train.py --config configs/negbench.py:negmcq_a0.9 --workdir runs/nb_negmcq_a0.9 \
      --config.init_from=runs/nb_pretrain/export
  python eval.py --suite negbench --config configs/negbench.py --checkpoint runs/nb_negmcq_a0.9

Variants (`<stage>` or `<stage>_gdn`, the text tower's mixer Gated DeltaNet instead of attention):
- pretrain: CLIP loss on the scenes' affirmative captions only (data.source scenes);
- negcap: fine-tuning on NegCap (data.source negcap: each scene's caption and two negated ones);
- negmcq_a<alpha>, alpha in {0, 0.5, 0.9, 0.99, 1}: NegCap + NegMCQ (data.source negmcq), the
  loss alpha * CLIP + (1 - alpha) * MCQ;
- tiny: pretrain at smoke-test size, and the suite on a few scenes (seconds on a CPU;
  `tiny_sizes` shrinks any other stage the same way);
- default (no variant): the suite's settings on the pretrain model's sections.
Fine-tuning starts from the pretrained run's export (`--config.init_from=<workdir>/export`).
`--config.negbench.mcq_csv=...` (and retrieval_csv, negated_retrieval_csv, image_root) evaluate
on the released NegBench CSVs instead of the scenes' test split.
"""

import ml_collections

from configs import contrastive
from configs.base import set_model_size, smoke_run

ALPHAS = ("0", "0.5", "0.9", "0.99", "1")
STAGES = ("pretrain", "negcap") + tuple(f"negmcq_a{a}" for a in ALPHAS)
VARIANTS = ("default", "tiny") + STAGES + tuple(f"{s}_gdn" for s in STAGES)


def training_config(stage: str, mixer: str):
  c = contrastive.get_config()
  c.seq_len = 32  # the longest negated caption: 25 words and <eos>
  c.batch_size = 64
  c.data.source = "scenes" if stage == "pretrain" else stage.partition("_")[0]
  del c.data["toy_pairs"]
  s = c.data.scenes = ml_collections.ConfigDict()
  s.image_size = 32
  s.num_train_images = 4000
  s.num_val_images = 256
  s.off_context_weight = 0.1
  s.num_negated = 2  # negcap / negmcq: negated captions per scene (each a record)
  s.keep_original = True  # ... and the affirmative caption
  e = c.contrastive.encoder
  e.image_size, e.patch_size = 32, 8
  e.vision_width, e.vision_depth, e.vision_heads, e.vision_mlp_dim = 64, 2, 2, 128
  e.embed_dim = 64
  set_model_size(c, d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
  c.model.layer_pattern = mixer
  c.model.chunk_size = 16
  if mixer == "gdn":
    c.model.mixer_options.gdn = {"expand_v": 1}
  c.contrastive.alpha = float(stage.rpartition("_a")[2]) if stage.startswith("negmcq") else 1.0
  c.optim.warmup_steps = 30
  c.train.log_every = 25
  c.train.eval_steps = 4
  c.train.keep_checkpoints = 1
  if stage == "pretrain":
    c.optim.learning_rate = 2e-3
    c.train.num_steps = 500
  else:  # fine-tuning: fewer, smaller steps (each also encodes 4 options per image) at a lower rate
    c.batch_size = 32
    c.optim.learning_rate = 5e-4
    c.optim.warmup_steps = 20
    c.train.num_steps = 200
  c.train.eval_every = c.train.checkpoint_every = c.train.num_steps
  return c


def add_suite_config(c: ml_collections.ConfigDict):
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
  return c


def tiny_sizes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any stage's config to smoke-test size (the `tiny` variant is pretrain shrunk; the
  notebook shrinks its fine-tuning stage the same way): a few scenes, narrow towers, 20 steps,
  and the suite on a few test scenes. Returns c."""
  c.batch_size = 16
  c.data.scenes.update(num_train_images=128, num_val_images=32)
  c.contrastive.encoder.update(vision_width=16, vision_depth=1, vision_mlp_dim=32, embed_dim=16)
  c.optim.warmup_steps = 5
  set_model_size(c, d_model=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32)
  smoke_run(c)
  c.negbench.update(num_images=48, batch_size=32)
  return c


def get_config(arg: str | None = None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/negbench.py; valid: {VARIANTS}")
  stage, gdn, _ = variant.partition("_gdn")
  c = add_suite_config(training_config("pretrain" if stage in ("default", "tiny") else stage,
                                        "gdn" if gdn else "attention"))
  return tiny_sizes(c) if variant == "tiny" else c
