"""The `reward` task: a sequence-scoring reward model trained on preference pairs (Bradley-Terry)
or on scored responses (pointwise regression), optionally with the paraphrase-consistency
regulariser or the paraphrase-augmentation baseline of reWordBench (arXiv 2503.11751).

Model: lloglin.models.reward.RewardModel (the decoder trunk of any mixer, a scalar head read at
the last non-padding token). `init_from` loads an LM export into the trunk and drops its LM head.
All rows of a batch (chosen, rejected, paraphrases) run through one forward, stacked on the
batch axis.

Options: the experiment config's `reward` section (`configure` reads it; a config without one,
such as a run saved before it existed, is plain Bradley-Terry):
- objective "bradley_terry": pair batches (lloglin.data.scored.make_pair_dataset); per pair
  bt = softplus(-(r(x, y_c) - r(x, y_r))).
  objective "regression": scored batches (lloglin.data.scored.make_scored_dataset); per record
  mse = (r(x, y) - s)^2, the paper's base objective on HelpSteer2-like scores.
- consistency_alpha (alpha >= 0) adds alpha * consistency, with consistency = (r(x, y) -
  r(x, y~))^2 for a record, and the mean of that over chosen and rejected for a pair (our reading
  of the paper's Bradley-Terry form, which it does not spell out), y~ the data's paraphrase of
  y. Both rewards carry gradient (no stop-gradient): the paper writes the term without one, and
  that is its natural reading.
- augmentation adds the base term of the paraphrased example, (r(x, y~) - s)^2 or
  bt(y~_c, y~_r): the paper's baseline E[(r(y) - s)^2 + (r(y~) - s)^2], the paraphrase as an
  extra example with the same score or pair label, summed as the paper writes it (not averaged
  over a doubled batch). With consistency_alpha > 0 as well, all three terms add up.
The loss is the batch mean of the per-example sum of those terms. Paraphrase rows are read (one
more forward per row) only when alpha > 0 or augmentation; evaluation reads them wherever the
data has them, so that every variant reports its consistency.

Logged terms: the base term (bt / mse) and, where paraphrases are read, consistency and the base
term of the paraphrases (bt_paraphrase / mse_paraphrase), each on its own; for pairs accuracy
(r_c > r_r; a tie counts as wrong) and margin (the mean of r_c - r_r). Eval metrics: eval_loss
(the objective) and eval_<term> of every term; pairs eval_accuracy, eval_margin, eval_pairs (and
eval_paraphrase_accuracy); records eval_correlation (Pearson, rewards against scores; nan where
either is constant) and eval_records.
"""

import dataclasses
import functools
import math
import numbers

import jax.numpy as jnp

from lloglin.data.scored import make_pair_dataset, make_scored_dataset
from lloglin.data.sections import section_fields
from lloglin.models.reward import build_reward_model
from lloglin.training.losses import bradley_terry, squared_difference
from lloglin.training.tasks.base import Task, register_task, summed_evaluation

OBJECTIVES = ("bradley_terry", "regression")
PAIR_ROWS = ("chosen", "rejected")
PAIR_PARAPHRASE_ROWS = ("chosen_paraphrase", "rejected_paraphrase")
TERMS = ("bt", "bt_paraphrase", "mse", "mse_paraphrase", "consistency")


@dataclasses.dataclass(frozen=True)
class RewardOptions:
  """The `reward` section of an experiment config (the module docstring says what each does)."""
  objective: str = "bradley_terry"
  consistency_alpha: float = 0.0
  augmentation: bool = False

  @property
  def pairs(self) -> bool:
    return self.objective == "bradley_terry"

  @property
  def reads_paraphrases(self) -> bool:
    return self.consistency_alpha > 0 or self.augmentation


def options_of(config) -> RewardOptions:
  """The validated RewardOptions of an experiment config (a ConfigDict or a saved dict)."""
  options = RewardOptions(**section_fields(config, "reward", RewardOptions))
  if options.objective not in OBJECTIVES:
    raise ValueError(f"reward.objective={options.objective!r}; expected one of {OBJECTIVES}")
  alpha = options.consistency_alpha
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
      math.isfinite(alpha) and alpha >= 0):
    raise ValueError(f"reward.consistency_alpha={alpha!r}; expected a finite number >= 0")
  if not isinstance(options.augmentation, bool):
    raise ValueError(f"reward.augmentation={options.augmentation!r}; expected True or False")
  return options


def rewards_of(model, batch, names) -> dict:
  """{name: rewards [B]} of the rows batch[name] (segment ids batch[f"{name}_segment_ids"]),
  from one forward over all of them."""
  B = batch[names[0]].shape[0]
  tokens_NT = jnp.concatenate([batch[name] for name in names])
  segment_ids_NT = jnp.concatenate([batch[f"{name}_segment_ids"] for name in names])
  r_N = model(tokens_NT, segment_ids_BT=segment_ids_NT)
  return {name: r_N[k * B:(k + 1) * B] for k, name in enumerate(names)}


def per_example(model, batch, options: RewardOptions, *, paraphrases: bool):
  """(objective [B], {term: [B]}, {row name: rewards [B]}) of one batch; `paraphrases` reads
  the paraphrase rows too (then the terms include consistency and the paraphrases' base term)."""
  if options.pairs:
    r = rewards_of(model, batch, PAIR_ROWS + (PAIR_PARAPHRASE_ROWS if paraphrases else ()))
    terms = {"bt": bradley_terry(r["chosen"], r["rejected"])}
    if paraphrases:
      terms["bt_paraphrase"] = bradley_terry(r["chosen_paraphrase"], r["rejected_paraphrase"])
      terms["consistency"] = (squared_difference(r["chosen"], r["chosen_paraphrase"]) +
                              squared_difference(r["rejected"], r["rejected_paraphrase"])) / 2
    base = "bt"
  else:
    r = rewards_of(model, batch, ("response",) + (("paraphrase",) if paraphrases else ()))
    terms = {"mse": squared_difference(r["response"], batch["score"])}
    if paraphrases:
      terms["mse_paraphrase"] = squared_difference(r["paraphrase"], batch["score"])
      terms["consistency"] = squared_difference(r["response"], r["paraphrase"])
    base = "mse"
  objective_B = terms[base]
  if options.augmentation:
    objective_B = objective_B + terms[f"{base}_paraphrase"]
  if options.consistency_alpha:
    objective_B = objective_B + options.consistency_alpha * terms["consistency"]
  return objective_B, terms, r


def loss(model, batch, *, options: RewardOptions):
  objective_B, terms, r = per_example(model, batch, options,
                                      paraphrases=options.reads_paraphrases)
  logged = {name: term_B.mean() for name, term_B in terms.items()}
  if options.pairs:
    margin_B = r["chosen"] - r["rejected"]
    logged.update(accuracy=(margin_B > 0).mean(dtype=jnp.float32), margin=margin_B.mean())
  return objective_B.mean(), logged


def eval_sums(model, batch, *, options: RewardOptions):
  paraphrases = (PAIR_PARAPHRASE_ROWS[0] if options.pairs else "paraphrase") in batch
  objective_B, terms, r = per_example(model, batch, options, paraphrases=paraphrases)
  sums = {"loss_sum": objective_B.sum(), "count": jnp.asarray(objective_B.shape[0], jnp.float32),
          **{f"{name}_sum": term_B.sum() for name, term_B in terms.items()}}
  if options.pairs:
    margin_B = r["chosen"] - r["rejected"]
    sums.update(correct_sum=(margin_B > 0).sum(dtype=jnp.float32), margin_sum=margin_B.sum())
    if paraphrases:
      sums["paraphrase_correct_sum"] = (r["chosen_paraphrase"] > r["rejected_paraphrase"]).sum(
          dtype=jnp.float32)
  else:
    r_B, s_B = r["response"], batch["score"].astype(jnp.float32)
    sums.update(r_sum=r_B.sum(), s_sum=s_B.sum(), rr_sum=(r_B * r_B).sum(),
                ss_sum=(s_B * s_B).sum(), rs_sum=(r_B * s_B).sum())
  return sums


def eval_metrics(totals: dict) -> dict:
  """The eval metrics (module docstring) from the summed eval batches."""
  count = max(float(totals["count"]), 1.0)
  out = {"eval_loss": float(totals["loss_sum"]) / count}
  out.update({f"eval_{name}": float(totals[f"{name}_sum"]) / count
              for name in TERMS if f"{name}_sum" in totals})
  if "correct_sum" in totals:
    out.update(eval_accuracy=float(totals["correct_sum"]) / count,
               eval_margin=float(totals["margin_sum"]) / count, eval_pairs=int(totals["count"]))
    if "paraphrase_correct_sum" in totals:
      out["eval_paraphrase_accuracy"] = float(totals["paraphrase_correct_sum"]) / count
  else:
    mean_r, mean_s = float(totals["r_sum"]) / count, float(totals["s_sum"]) / count
    var_r = float(totals["rr_sum"]) / count - mean_r ** 2
    var_s = float(totals["ss_sum"]) / count - mean_s ** 2
    cov = float(totals["rs_sum"]) / count - mean_r * mean_s
    out["eval_correlation"] = (cov / math.sqrt(var_r * var_s) if var_r > 0 and var_s > 0
                               else math.nan)
    out["eval_records"] = int(totals["count"])
  return out


def example_batch(seq_len: int, *, options: RewardOptions) -> dict:
  """A one-row batch of the configured format (zeros)."""
  if options.pairs:
    names = PAIR_ROWS + (PAIR_PARAPHRASE_ROWS if options.reads_paraphrases else ())
  else:
    names = ("response",) + (("paraphrase",) if options.reads_paraphrases else ())
  batch = {}
  for name in names:
    batch[name] = jnp.zeros((1, seq_len), jnp.int32)
    batch[f"{name}_segment_ids"] = jnp.ones((1, seq_len), jnp.int32)
  if not options.pairs:
    batch["score"] = jnp.zeros((1,), jnp.float32)
  return batch


def configured(options: RewardOptions) -> dict:
  """The Task fields that depend on the options."""
  make_dataset = make_pair_dataset if options.pairs else make_scored_dataset
  rows = (2 if options.pairs else 1) * (2 if options.reads_paraphrases else 1)
  return dict(make_dataset=functools.partial(make_dataset,
                                             paraphrases=options.reads_paraphrases),
              loss=functools.partial(loss, options=options),
              eval_sums=functools.partial(eval_sums, options=options),
              example_batch=functools.partial(example_batch, options=options),
              sequences_per_row=rows)


def configure(task: Task, config) -> Task:
  return dataclasses.replace(task, **configured(options_of(config)))


TASK = register_task(Task(
    name="reward", build_model=build_reward_model, evaluate=summed_evaluation(eval_metrics),
    lm_part=lambda model: model.trunk, drops_lm_head=True, configure=configure,
    **configured(RewardOptions())))
