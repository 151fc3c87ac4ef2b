"""The `lm` suite: a trained language model on validation data and a prompt.

Metrics (loss, perplexity, accuracy, per-position loss with its PNG) over `num_batches` validation
batches of the training data, or of `data_path`; with a `prompt`, a continuation streamed as it is
generated on the decode caches. Settings and their meaning: configs/lm.py.
"""

import os

import ml_collections
import numpy as np
from flax import nnx

from lloglin.data import make_dataset, make_tokenizer
from lloglin.evals.registry import register_suite
from lloglin.evals.report import save_figure
from lloglin.inference.generate import generate
from lloglin.parallel import distributed
from lloglin.training.loading import load_model
from lloglin.training.step import make_eval_step
from lloglin.training.tasks.lm import evaluate


@register_suite("lm", needs_checkpoint=True)
def run(config, *, checkpoint: str, out_dir: str) -> dict:
  model, train_config = load_model(checkpoint)
  task = train_config.get("task", "lm")
  if task != "lm":
    raise ValueError(f"checkpoint={checkpoint!r} holds a model of task {task!r}; the lm suite "
                     "evaluates language models (task 'lm'). The run's own eval metrics are in "
                     "its metrics.jsonl")
  cfg = ml_collections.ConfigDict(train_config)
  if config.data_path:
    cfg.data.source, cfg.data.path = "text", config.data_path
  results = {"data": cfg.data.to_dict()}
  if config.num_batches:
    results.update(_metrics(model, cfg, config, out_dir))
  if config.prompt is not None:
    results["generation"] = _generation(model, cfg, config)
  return results


def _metrics(model, cfg, config, out_dir: str) -> dict:
  dataset = make_dataset(cfg.data, split="validation", seq_len=cfg.seq_len,
                         batch_size=config.batch_size or cfg.batch_size, seed=cfg.seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  metrics = evaluate(make_eval_step(graphdef), params, rest, dataset, config.num_batches,
                     distributed.data_mesh(), progress_desc="lm: validation batches")
  plot = plot_per_position_loss(metrics["eval_loss_per_position"],
                                os.path.join(out_dir, "per_position_loss.png"),
                                title=f"per-position loss ({cfg.data.source})")
  print(f"loss {metrics['eval_loss']:.4f}  perplexity {metrics['eval_perplexity']:.3f}  "
        f"accuracy {metrics['eval_accuracy']:.4f}  ({metrics['eval_tokens']} tokens)")
  return dict(metrics, per_position_plot=os.path.basename(plot))


def _generation(model, cfg, config) -> dict:
  """Continues config.prompt, printing the text as it is generated (KV / state caches)."""
  tokenizer = make_tokenizer(cfg.data)
  if tokenizer is None:
    raise ValueError(f"prompt: data.source={cfg.data.source!r} of the checkpoint has no tokenizer "
                     f"to encode it")
  stop = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]  # as training documents start
  print(config.prompt, end="", flush=True)
  streamed = []

  def show(row, token):
    del row  # one prompt
    before = tokenizer.decode(streamed)
    streamed.append(token)
    print(tokenizer.decode(streamed)[len(before):], end="", flush=True)

  [tokens] = generate(model, [bos + tokenizer.encode(config.prompt)], config.max_new_tokens,
                      seed=config.seed, temperature=config.temperature, top_k=config.top_k,
                      top_p=config.top_p, stop_tokens=stop, on_token=show,
                      impl=config.decode_impl)
  print()
  return {"prompt": config.prompt, "continuation": tokenizer.decode(tokens), "tokens": tokens}


def plot_per_position_loss(loss_T, path: str, title: str = "") -> str:
  """PNG of the loss at each position of the sequence (positions without targets omitted)."""
  from matplotlib.figure import Figure
  loss_T = np.asarray(loss_T, dtype=float)
  pos = np.nonzero(loss_T > 0)[0]
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  ax.plot(pos, loss_T[pos], marker=".", linewidth=1)
  ax.set_xlabel("position in sequence")
  ax.set_ylabel("loss (nats)")
  ax.set_title(title or "per-position loss")
  ax.grid(alpha=0.3)
  return save_figure(fig, path)
