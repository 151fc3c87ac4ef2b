"""Evaluate a trained lloglin model from its directory alone.

  python eval.py --checkpoint runs/mqar                      # metrics on the config's data
  python eval.py --checkpoint runs/shakespeare --data_path my.txt --prompt "ROMEO:" \
      --max_new_tokens 200 --temperature 0.8 --top_p 0.95

--checkpoint takes a training workdir, its checkpoints/ folder, or a params-only export.
Writes <out>/eval.json and <out>/per_position_loss.png (out defaults to <checkpoint>/eval).
"""

import json
import logging
import os

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from flax import nnx

from lloglin.data import make_dataset, make_tokenizer
from lloglin.evals.lm import evaluate, plot_per_position_loss
from lloglin.inference.generate import DECODE_IMPLS, generate
from lloglin.parallel import distributed
from lloglin.training.loading import load_model
from lloglin.training.step import make_eval_step

flags.DEFINE_string("checkpoint", None, "Workdir, checkpoints/ folder or export.", required=True)
flags.DEFINE_string("out", None, "Output directory (default <checkpoint>/eval).")
flags.DEFINE_integer("num_batches", 20, "Validation batches for the metrics (0 = skip).")
flags.DEFINE_integer("batch_size", 0, "Batch size for the metrics (0 = the training one).")
flags.DEFINE_string("data_path", None, "Evaluate on this local text file/folder instead.")
flags.DEFINE_string("prompt", None, "Generate a continuation of this text.")
flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_enum("decode_impl", "auto", DECODE_IMPLS,
                  "Decode step: plain, fused (whole-model kernel, attention-only models) or auto "
                  "(fused where it applies on a Hopper GPU).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax reports every save at INFO
  logging.getLogger("lloglin").setLevel(logging.INFO)
  model, config = load_model(FLAGS.checkpoint)
  cfg = ml_collections.ConfigDict(config)
  if FLAGS.data_path:
    cfg.data.source, cfg.data.path = "text", FLAGS.data_path
  out_dir = FLAGS.out or os.path.join(FLAGS.checkpoint, "eval")
  os.makedirs(out_dir, exist_ok=True)
  results = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "data": cfg.data.to_dict()}

  if FLAGS.num_batches:
    dataset = make_dataset(cfg.data, split="validation", seq_len=cfg.seq_len,
                           batch_size=FLAGS.batch_size or cfg.batch_size, seed=cfg.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mesh = distributed.data_mesh()
    metrics = evaluate(make_eval_step(graphdef), params, rest, dataset, FLAGS.num_batches, mesh)
    plot_path = os.path.join(out_dir, "per_position_loss.png")
    plot_per_position_loss(metrics["eval_loss_per_position"], plot_path,
                           title=f"per-position loss ({cfg.data.source})")
    results.update(metrics, per_position_plot=plot_path)
    print(f"loss {metrics['eval_loss']:.4f}  perplexity {metrics['eval_perplexity']:.3f}  "
          f"accuracy {metrics['eval_accuracy']:.4f}  ({metrics['eval_tokens']} tokens)")

  if FLAGS.prompt is not None:
    tokenizer = make_tokenizer(cfg.data)
    if tokenizer is None:
      raise ValueError(f"data.source={cfg.data.source!r} has no tokenizer to encode --prompt")
    stop = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]  # as training documents start
    print(FLAGS.prompt, end="", flush=True)
    streamed = []  # the continuation is printed as it is generated (KV / state caches)

    def show(row, token):
      del row  # one prompt
      before = tokenizer.decode(streamed)
      streamed.append(token)
      print(tokenizer.decode(streamed)[len(before):], end="", flush=True)

    [tokens] = generate(model, [bos + tokenizer.encode(FLAGS.prompt)], FLAGS.max_new_tokens,
                        seed=FLAGS.seed, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                        top_p=FLAGS.top_p, stop_tokens=stop, on_token=show,
                        impl=FLAGS.decode_impl)
    text = tokenizer.decode(tokens)
    print()
    results["generation"] = {"prompt": FLAGS.prompt, "continuation": text, "tokens": tokens}

  path = os.path.join(out_dir, "eval.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
