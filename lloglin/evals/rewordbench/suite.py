"""The `rewordbench` suite: a reward model's ranking accuracy on preference pairs before and after
each meaning-preserving transform (settings: configs/rewordbench.py, under `rewordbench`).

Data: `data_path`, a RewardBench-format .jsonl / .parquet file (data.py), or, when empty, the
held-out pairs of the synthetic preference world the checkpoint was trained on. Scorer: the
checkpoint's reward model, or a user's "module:function". Each transform applies to the records
of its subsets; the report holds, per transform, the metrics of metrics.py per category and
overall, and the suite writes one PNG per transform plus `drop_per_transform.png`.
"""

import os

import ml_collections
import numpy as np

from lloglin.evals.registry import register_suite
from lloglin.evals.report import progress
from lloglin.evals.rewordbench import paraphrase
from lloglin.evals.rewordbench.data import check_record, load_records
from lloglin.evals.rewordbench.metrics import correct, summarize
from lloglin.evals.rewordbench.plots import plot_drops, plot_transform
from lloglin.evals.rewordbench.scoring import (Scorer, checkpoint_scorer, function_scorer,
                                               score_texts)
from lloglin.evals.rewordbench.transforms import TRANSFORMS, Transform, get_transform
from lloglin.training.loading import load_model

SUMMARY_FIGURE = "drop_per_transform.png"


@register_suite("rewordbench")
def run(config, *, checkpoint: str | None, out_dir: str) -> dict:
  cfg = config.rewordbench
  _check_settings(cfg)
  transforms = [get_transform(n) for n in transform_names(cfg)]
  model = train_config = None
  if cfg.scorer == "checkpoint" or not cfg.data_path:
    if not checkpoint:
      raise ValueError("checkpoint: rewordbench needs a trained run (eval.py --checkpoint DIR) "
                       "for scorer='checkpoint' and for the synthetic world's pairs "
                       "(data_path=''); got none")
    model, train_config = load_model(checkpoint)
  records = _records(cfg, train_config)
  scorer = (checkpoint_scorer(model, train_config, batch_size=cfg.batch_size)
            if cfg.scorer == "checkpoint" else function_scorer(cfg.scorer))
  rewriters = paraphrase.make_rewriters(cfg.paraphrase,
                                        [t.name for t in transforms if t.fn is None])
  results = evaluate(records, transforms, scorer, seed=cfg.seed, batch_size=cfg.batch_size,
                     rewriters=rewriters, embed=paraphrase.make_embed(cfg.paraphrase),
                     threshold=cfg.paraphrase.similarity_threshold)
  results["data"] = ({"path": cfg.data_path} if cfg.data_path
                     else {"synthetic_world_test_pairs": train_config["data"]})
  results["scorer"] = cfg.scorer
  _figures(results, out_dir)
  _print_table(results)
  return results


def _check_settings(cfg):
  for key, value, ok, expected in (
      ("batch_size", cfg.batch_size, cfg.batch_size >= 1, ">= 1"),
      ("max_records", cfg.max_records, cfg.max_records >= 0, ">= 0 (0 = all)"),
      ("world_pairs", cfg.world_pairs, cfg.world_pairs >= 1 or cfg.data_path, ">= 1"),
      ("paraphrase.similarity_threshold", cfg.paraphrase.similarity_threshold,
       0 <= cfg.paraphrase.similarity_threshold <= 1, "in [0, 1] (0 = no filter)")):
    if not ok:
      raise ValueError(f"rewordbench.{key}={value!r}; expected {expected}")


def transform_names(cfg) -> list[str]:
  """config.rewordbench.transforms (names, each may be a comma-separated list), or when empty
  every pure transform and the model-based ones that the paraphrase settings can run."""
  names = [n.strip() for item in cfg.transforms for n in str(item).split(",") if n.strip()]
  if names:
    return [get_transform(n).name for n in names]
  return ([n for n, t in TRANSFORMS.items() if t.fn is not None]
          + paraphrase.default_names(cfg.paraphrase))


def _records(cfg, train_config: dict | None) -> list[dict]:
  if cfg.data_path:
    records = load_records(cfg.data_path)
  else:  # the synthetic world's held-out pairs, made by the training side of the package
    from lloglin.data.reward_world import world_pairs
    pairs = world_pairs(ml_collections.ConfigDict(train_config["data"]), split="test",
                        seed=cfg.seed, num=cfg.world_pairs)
    records = [check_record(p, f"synthetic world pair {i}") for i, p in enumerate(pairs)]
  if 0 < cfg.max_records < len(records):
    keep = np.random.default_rng(cfg.seed).choice(len(records), cfg.max_records, replace=False)
    records = [records[i] for i in sorted(keep)]
  return records


def evaluate(records: list[dict], transforms: list[Transform], scorer: Scorer, *, seed: int,
             batch_size: int, rewriters=None, embed=None, threshold: float = 0.0) -> dict:
  """The results of `transforms` on `records` (see the module docstring); `rewriters`: {name:
  rewriter} of the model-based transforms (lloglin.evals.rewordbench.paraphrase)."""
  rewards = {}  # (prompt, response) -> reward: each distinct pair is scored once

  def correctness(recs, desc):
    pairs = [(r["prompt"], r[f]) for r in recs for f in ("chosen", "rejected")]
    todo = list(dict.fromkeys(p for p in pairs if p not in rewards))
    for start in progress(range(0, len(todo), batch_size), desc=desc):
      chunk = todo[start:start + batch_size]
      try:
        rewards.update(zip(chunk, score_texts(scorer, *zip(*chunk))))
      except ValueError as e:  # say which transform made the pair the scorer refused
        raise ValueError(f"{desc}: {e}") from e
    r = np.array([rewards[p] for p in pairs]).reshape(-1, 2)
    return correct(r[:, 0], r[:, 1])

  categories = np.array([r["category"] for r in records])
  before = correctness(records, "rewordbench: original pairs")
  results = {"num_records": len(records), "seed": seed,
             "original": summarize(categories, before, before), "transforms": {}}
  for t in transforms:
    where = [i for i, r in enumerate(records) if t.applies_to(r["subset"])]
    entry = results["transforms"][t.name] = {
        "family": t.family, "fields": list(t.fields), "subsets": t.subsets or "all",
        "description": t.doc, "applicable": len(where)}
    if t.fn is not None:
      new = [t.apply(records[i], seed) for i in where]
    else:
      new = paraphrase.rewrite_records(t, [records[i] for i in where], rewriters[t.name], seed,
                                       embed=embed, threshold=threshold)
    kept = [(i, r) for i, r in zip(where, new) if r is not None]
    entry["kept"] = len(kept)
    if kept:
      index, recs = map(list, zip(*kept))
      entry["metrics"] = summarize(categories[index], before[index],
                                   correctness(recs, f"rewordbench: {t.name}"))
  return results


def _figures(results: dict, out_dir: str):
  measured = {n: e for n, e in results["transforms"].items() if "metrics" in e}
  for name, entry in measured.items():
    entry["figure"] = os.path.basename(plot_transform(
        name, entry["metrics"], os.path.join(out_dir, f"transform_{name}.png")))
  if measured:
    plot_drops({n: e["metrics"]["overall"]["drop"] for n, e in measured.items()},
               {n: e["family"] for n, e in measured.items()},
               os.path.join(out_dir, SUMMARY_FIGURE))
    results["summary_figure"] = SUMMARY_FIGURE


def _print_table(results: dict):
  original = results["original"]["overall"]
  print(f"rewordbench: {results['num_records']} pairs, original accuracy "
        f"{original['accuracy_before']:.3f}")
  print(f"{'transform':<24}{'n':>6}{'before':>8}{'after':>8}{'drop':>8}{'flips':>8}")
  for name, entry in results["transforms"].items():
    if "metrics" not in entry:
      why = ("every rewrite failed the similarity filter" if entry["applicable"]
             else "no record of its subsets")
      print(f"{name:<24}{'-':>6}  ({why})")
      continue
    m = entry["metrics"]["overall"]
    print(f"{name:<24}{m['n']:>6}{m['accuracy_before']:>8.3f}{m['accuracy_after']:>8.3f}"
          f"{m['drop']:>8.3f}{m['flip_rate']:>8.3f}")
