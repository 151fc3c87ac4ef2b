"""The `perception` suite: judge pairs of images on each principle, aggregate the outcomes into
per-image scores (Bradley-Terry with ties, win rate) and compare them with human ratings.

Data: the synthetic set (synthetic.py; `perception.num_images`, `seed`) by default, whose
"human" score is its clutter level (the complexity it was built with) and whose true levels are
reported too; or a user's image folder with a scores CSV (`perception.image_dir`, `scores_csv`;
data.py). Judges (`perception.judge`): "measure" (the computed measures of judges.MEASURES),
"oracle" (the synthetic set's true levels, flipped with probability `perception.flip`), "api"
(an OpenAI-compatible multimodal chat endpoint, `perception.api`; api.py), "encoder" (a dual
encoder's image-text similarity: the checkpoint's, or `perception.encoder`) or a user's
"module:function" called with the settings and returning a judge.

Results per principle: Bradley-Terry scores and win rates per image, PLCC / SROCC against the
human scores over all images and per category, the SROCC against the true level (synthetic), the
images where principle and human ranks disagree most, and the failed judgements (recorded and
skipped). Figures: scores.png (score against human rating per principle), correlations.png.
"""

import os

import numpy as np
import scipy.stats
from matplotlib.figure import Figure

from lloglin.evals.negbench.encoder import make_encoder
from lloglin.evals.perception import aggregate, data, judges, synthetic
from lloglin.evals.perception.api import ChatJudge
from lloglin.evals.perception.principles import principle as check_principle
from lloglin.evals.registry import register_suite
from lloglin.evals.report import save_figure
from lloglin.evals.userfn import import_function


@register_suite("perception")
def run(config, *, checkpoint: str | None, out_dir: str) -> dict:
  cfg = config.perception
  items = load_items(cfg)
  judge = make_judge(cfg, items, checkpoint, out_dir)
  workers = cfg.api.max_concurrency if cfg.judge == "api" else 1
  pairs_P2 = judges.sample_pairs(len(items), per_image=cfg.pairs_per_image or None,
                                 seed=cfg.seed)
  ids = [it.id for it in items]
  human = np.array([it.human for it in items], dtype=np.float64)
  categories = [it.category or "all" for it in items]
  results = {"num_images": len(items), "num_pairs": len(pairs_P2), "judge": cfg.judge,
             "principles": {}}
  for name in cfg.principles:
    records, failures = judges.judge_pairs(judge, items, pairs_P2, name, workers=workers)
    scores = aggregate.scores_from_records(len(items), records, prior=cfg.prior)
    bt = scores["bradley_terry"]
    out = {"ids": ids, **scores, "num_judged": len(records), "failures": failures,
           "ties": sum(r["winner"] == "tie" for r in records),
           "correlations": aggregate.correlations(
               bt, human, None if set(categories) == {"all"} else categories),
           "disagreements": aggregate.disagreements(ids, bt, human, top=cfg.top_disagreements)}
    if all(name in it.levels for it in items):
      out["srocc_true_level"] = float(scipy.stats.spearmanr(
          bt, [it.levels[name] for it in items]).statistic)
    results["principles"][name] = out
    print(f"perception {name}: SROCC vs human {out['correlations']['all'].get('srocc')}, "
          f"{len(failures)} failed judgements", flush=True)
  plot_scores(results, human, categories, os.path.join(out_dir, "scores.png"))
  plot_correlations(results, os.path.join(out_dir, "correlations.png"))
  return results


def load_items(cfg) -> list[synthetic.Item]:
  for name in cfg.principles:
    check_principle(name)
  if not cfg.principles:
    raise ValueError("perception.principles: expected at least one principle")
  if cfg.image_dir or cfg.scores_csv:
    return data.load_folder(cfg.image_dir, cfg.scores_csv, layout=cfg.layout,
                            image_column=cfg.image_column,
                            score_column=cfg.score_column, category_column=cfg.category_column,
                            max_side=cfg.max_side, min_side=cfg.min_side)
  items = synthetic.make_images(cfg.num_images, image_size=cfg.image_size, seed=cfg.seed)
  return [synthetic.Item(it.id, it.image, it.levels, human=it.levels["clutter"]) for it in items]


def make_judge(cfg, items, checkpoint: str | None, out_dir: str):
  if cfg.judge == "api":
    a = cfg.api
    return ChatJudge(a.base_url, a.model, api_key_env=a.key_env,
                     cache_dir=a.cache_dir or os.path.join(out_dir, "api_cache"),
                     max_retries=a.max_retries, backoff=a.backoff,
                     requests_per_second=a.requests_per_second, timeout=a.timeout,
                     max_tokens=a.max_tokens)
  if cfg.judge == "encoder":
    encoder = make_encoder(cfg, checkpoint, suite="perception",
                           use="perception.judge='encoder'")
    return judges.EncoderJudge(encoder, items, texts=dict(cfg.encoder_texts),
                               batch_size=cfg.batch_size, tol=cfg.tie_tol)
  if cfg.judge == "measure":
    unmeasured = [n for n in cfg.principles if n not in judges.MEASURES]
    if unmeasured:
      raise ValueError(f"perception.principles: {unmeasured} have no computed measure; the "
                       f"measure judge covers {list(judges.MEASURES)}")
    return judges.MeasureJudge(tol=cfg.tie_tol)
  if cfg.judge == "oracle":
    unknown = sorted({n for n in cfg.principles for it in items if n not in it.levels})
    if unknown:
      raise ValueError(f"perception.judge='oracle': no true level of {unknown} in the data (the "
                       f"synthetic set has {list(synthetic.LEVEL_NAMES)}; a scored folder none)")
    return judges.NoisyOracleJudge(cfg.flip, seed=cfg.seed)
  if ":" in cfg.judge:
    return import_function(cfg.judge, what="perception.judge")(cfg)
  raise ValueError(f"perception.judge={cfg.judge!r}; expected 'measure', 'oracle', 'api', "
                   f"'encoder' or 'module:function'")


def plot_scores(results: dict, human, categories, path: str):
  """Each principle's scores against the human scores, one colour per category."""
  names = list(results["principles"])
  categories = np.asarray(categories)
  fig = Figure(figsize=(3.2 * len(names), 3))
  for k, name in enumerate(names):
    ax = fig.add_subplot(1, len(names), k + 1)
    bt = np.asarray(results["principles"][name]["bradley_terry"])
    for category in np.unique(categories):
      mask = categories == category
      ax.scatter(human[mask], bt[mask], s=8, label=str(category))
    ax.set(title=name, xlabel="human score", ylabel="Bradley-Terry score" if k == 0 else None)
  if len(np.unique(categories)) > 1:
    fig.axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
  save_figure(fig, path)


def plot_correlations(results: dict, path: str):
  names = list(results["principles"])
  fig = Figure(figsize=(1 + 1.2 * len(names), 3))
  ax = fig.add_subplot()
  x = np.arange(len(names))
  for offset, key in ((-0.2, "plcc"), (0.2, "srocc")):
    ax.bar(x + offset, [results["principles"][n]["correlations"]["all"].get(key, np.nan)
                        for n in names], width=0.4, label=key.upper())
  ax.set_xticks(x, names)
  ax.axhline(0, color="k", lw=0.5)
  ax.set(ylabel="correlation with human score", ylim=(-1, 1))
  ax.legend()
  save_figure(fig, path)
