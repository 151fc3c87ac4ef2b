"""Hybrid Ladder adaptation: rewire a trained model's upper layers, then fine-tune briefly.

The paper converts layers 16-32 of Llama-3.1-8B-Instruct to ladder layers and recovers the
original quality with a short fine-tune. Here, at toy scale:

  python -m lloglin.training.hybrid --source runs/standard \
      --config configs/ladder.py:hybrid --workdir runs/hybrid \
      [--config.model.residual_start_layer=3]

`--source` is a training workdir, its checkpoints/ folder or a params-only export. The
architecture comes from the source (the config's model sizes are replaced by the source's);
only the residual options (`residual_mode`, `residual_start_layer`, desync options) come from
the config. The converted weights become step 0 of `--workdir` with a fresh optimizer, and the
ordinary training loop fine-tunes from there (re-running the command resumes, like train.py).
"""

import json
import logging
import os

from flax import nnx

from lloglin.training.tasks.lm import evaluate
from lloglin.models import ModelConfig
from lloglin.models.decoder import with_residual_mode
from lloglin.parallel import mesh as mesh_lib, sharding
from lloglin.training import trainer
from lloglin.training.checkpoint import Checkpointer
from lloglin.training.loading import load_model
from lloglin.training.step import make_eval_step, make_program

log = logging.getLogger(__name__)

RESIDUAL_KEYS = ("residual_mode", "residual_start_layer", "desync_every", "desync_reduce")


def hybrid_model_config(source_model: dict, cfg) -> ModelConfig:
  """The source's architecture with the residual options of `cfg.model`."""
  values = dict(source_model)
  values.update({k: cfg.model[k] for k in RESIDUAL_KEYS})
  return ModelConfig.from_dict(values)


def eval_loss(model, cfg) -> float:
  """Validation loss of `model` on cfg's data (cfg.train.eval_steps batches), on cfg's mesh."""
  mesh = mesh_lib.make_mesh(cfg.get("mesh"))
  _, val_ds = trainer.make_datasets(cfg)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  eval_step = sharding.use_mesh(mesh, make_eval_step(graphdef))
  return evaluate(eval_step, params, rest, val_ds, cfg.train.eval_steps, mesh)["eval_loss"]


def prepare(source: str, cfg, workdir: str, *, report: bool = False) -> ModelConfig:
  """Writes the converted model as step 0 of `workdir` (unless it already has checkpoints) and
  points `cfg.model` at the converted architecture. Returns the converted model config.

  With `report`, logs the validation loss of the source and of the converted model before any
  fine-tuning (the zero-shot cost of the rewiring)."""
  model, src_config = load_model(source)
  mcfg = hybrid_model_config(src_config["model"], cfg)
  with cfg.unlocked():
    for k, v in mcfg.to_dict().items():
      cfg.model[k] = v
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    if ckpt.steps():
      log.info("%s already has checkpoints %s; resuming the fine-tune", workdir, ckpt.steps())
      return mcfg
    converted = with_residual_mode(model, mcfg.residual_mode,
                                   start_layer=mcfg.residual_start_layer,
                                   desync_every=mcfg.desync_every,
                                   desync_reduce=mcfg.desync_reduce)
    if report:
      log.info("validation loss before fine-tuning: source %.4f, converted %.4f",
               eval_loss(model, cfg), eval_loss(converted, cfg))
    model = converted
    train_ds, _ = trainer.make_datasets(cfg)
    mesh = mesh_lib.make_mesh(cfg.get("mesh"))
    # The trainer's own state builder, so that its restore finds exactly this structure.
    state = make_program(cfg.optim, model, num_steps=cfg.train.num_steps,
                         first_batch=lambda: trainer.peek(train_ds, mesh)).state
    saved = cfg.to_dict()
    saved["model"] = mcfg.to_dict()
    saved["hybrid_source"] = os.path.abspath(source)
    ckpt.save(0, state, data_state=train_ds.get_state(), config=saved)
    ckpt.wait()
  finally:
    ckpt.close()
  log.info("converted %s: layers >= %d are %s layers; step 0 written to %s", source,
           mcfg.residual_start_layer, mcfg.residual_mode, workdir)
  return mcfg


def main(argv):
  del argv
  from absl import flags
  FLAGS = flags.FLAGS
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  prepare(FLAGS.source, FLAGS.config, FLAGS.workdir, report=True)
  final = trainer.train(FLAGS.config, FLAGS.workdir)
  print(json.dumps({"final": {k: v for k, v in final.items()
                              if k != "eval_loss_per_position"}}, indent=1))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/ladder.py:hybrid", "Fine-tune config.",
                                  lock_config=True)
  flags.DEFINE_string("source", None, "Trained standard model (workdir or export).",
                      required=True)
  flags.DEFINE_string("workdir", None, "Where the hybrid model is fine-tuned.", required=True)
  app.run(main)
