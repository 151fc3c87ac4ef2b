"""The `contrastive` task: a CLIP-style dual encoder (lloglin.models.dual_encoder) trained with
symmetric InfoNCE on image-caption batches, optionally mixed with NegBench's multiple-choice loss
(arXiv 2501.09425): L = alpha * L_CLIP + (1 - alpha) * L_MCQ.

- L_CLIP: symmetric InfoNCE over the batch's [B, B] matrix scale * cos(image i, caption j)
  (lloglin.training.losses.info_nce); the other captions of the batch are the negatives.
- L_MCQ: for each image, the cross-entropy over scale * cos(image, option k) of its K option
  captions against the correct index (lloglin.training.losses.option_cross_entropy), averaged
  over the batch.
The paper draws one batch from each of two data loaders (NegCap for L_CLIP, NegMCQ for L_MCQ)
per step; here one batch carries both, the caption and the option set of each image (the
records of lloglin.data.contrastive), so both terms see the same images. The caption rows and
all option rows run through one text forward.

Options: the experiment config's `contrastive` section:
- alpha in [0, 1] (default 1.0: CLIP only, the options are not read); alpha < 1 needs a data
  source with options.
- encoder: the image tower and embedding (lloglin.models.dual_encoder.DualEncoderConfig's fields
  but `text`; the `model` section is the text tower).

Logged terms: clip, accuracy (image -> caption, in-batch: is the image's own caption the most
similar of the batch's B; chance 1/B), text_accuracy (caption -> image), logit_scale (the scale,
exp of the parameter), and where the options are read mcq and mcq_accuracy (chance 1/K). Eval
metrics: eval_loss (the objective), eval_clip, eval_accuracy, eval_text_accuracy, and wherever
the validation batches have options eval_mcq and eval_mcq_accuracy, eval_examples.
"""

import dataclasses
import functools
import math
import numbers

import jax.numpy as jnp

from lloglin.data.contrastive import make_contrastive_dataset
from lloglin.data.sections import section_fields
from lloglin.models.dual_encoder import DualEncoderConfig, build_dual_encoder, similarity_logits
from lloglin.training.losses import info_nce, option_cross_entropy
from lloglin.training.tasks.base import Task, register_task, summed_evaluation

EXAMPLE_OPTIONS = 4  # K of example_batch (any K gives the same model and optimizer state)


@dataclasses.dataclass(frozen=True)
class ContrastiveOptions:
  """The `contrastive` section of an experiment config (the module docstring says what each
  does); `encoder` holds DualEncoderConfig's image and embedding fields."""
  alpha: float = 1.0
  encoder: dict = dataclasses.field(default_factory=dict)

  @property
  def reads_options(self) -> bool:
    return self.alpha < 1

  def encoder_config(self, text) -> DualEncoderConfig:
    return DualEncoderConfig.from_dicts(text, self.encoder)


def options_of(config) -> ContrastiveOptions:
  """The validated ContrastiveOptions of an experiment config (a ConfigDict or a saved dict)."""
  section = section_fields(config, "contrastive", ContrastiveOptions)
  alpha = section.get("alpha", 1.0)
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
      math.isfinite(alpha) and 0 <= alpha <= 1):
    raise ValueError(f"contrastive.alpha={alpha!r}; expected a number in [0, 1]")
  encoder = dict(section.get("encoder") or {})
  # Checks the encoder fields now (a stand-in text tower: only the encoder's own fields matter).
  DualEncoderConfig.from_dicts(dict(vocab_size=1), encoder)
  return ContrastiveOptions(alpha=float(alpha), encoder=encoder)


def similarities(model, batch, *, with_options: bool) -> dict:
  """{"captions": [B, B] logits of images against captions, "options": [B, K] of each image
  against its options (with_options), "scale": the similarity scale}."""
  B, L = batch["tokens"].shape
  tokens_NL, lengths_N = batch["tokens"], batch["lengths"]
  if with_options:
    K = batch["option_tokens"].shape[1]
    tokens_NL = jnp.concatenate([tokens_NL, batch["option_tokens"].reshape(B * K, L)])
    lengths_N = jnp.concatenate([lengths_N, batch["option_lengths"].reshape(B * K)])
  images_BD = model.encode_image(batch["images"])
  texts_ND = model.encode_text(tokens_NL, lengths_N)
  scale = model.scale()
  out = {"captions": similarity_logits(scale, images_BD, texts_ND[:B]), "scale": scale}
  if with_options:
    options_BKD = texts_ND[B:].reshape(B, K, -1)
    out["options"] = scale * jnp.einsum("bd,bkd->bk", images_BD, options_BKD)
  return out


def terms_of(logits: dict, batch) -> dict:
  """The per-batch terms (module docstring) of `similarities`' logits, as means."""
  logits_BB = logits["captions"]
  diagonal_B = jnp.arange(logits_BB.shape[0])
  terms = {"clip": info_nce(logits_BB),
           "accuracy": (jnp.argmax(logits_BB, axis=1) == diagonal_B).mean(dtype=jnp.float32),
           "text_accuracy": (jnp.argmax(logits_BB, axis=0) == diagonal_B).mean(dtype=jnp.float32)}
  if "options" in logits:
    logits_BK = logits["options"]
    terms["mcq"] = option_cross_entropy(logits_BK, batch["answer"]).mean()
    terms["mcq_accuracy"] = (jnp.argmax(logits_BK, axis=1) == batch["answer"]).mean(
        dtype=jnp.float32)
  return terms


def objective(terms: dict, options: ContrastiveOptions):
  """alpha * clip + (1 - alpha) * mcq (clip alone where alpha is 1)."""
  if not options.reads_options:
    return terms["clip"]
  return options.alpha * terms["clip"] + (1 - options.alpha) * terms["mcq"]


def loss(model, batch, *, options: ContrastiveOptions):
  logits = similarities(model, batch, with_options=options.reads_options)
  terms = terms_of(logits, batch)
  return objective(terms, options), dict(terms, logit_scale=logits["scale"])


def eval_sums(model, batch, *, options: ContrastiveOptions):
  """Each term (and the objective) times the batch size: evaluate divides by the examples."""
  logits = similarities(model, batch, with_options="option_tokens" in batch)
  terms = terms_of(logits, batch)
  count = jnp.asarray(batch["tokens"].shape[0], jnp.float32)
  return {"loss_sum": objective(terms, options) * count, "count": count,
          **{f"{name}_sum": value * count for name, value in terms.items()}}


def eval_metrics(totals: dict) -> dict:
  count = max(float(totals["count"]), 1.0)
  out = {"eval_loss": float(totals["loss_sum"]) / count}
  out.update({f"eval_{key.removesuffix('_sum')}": float(value) / count
              for key, value in totals.items() if key.endswith("_sum") and key != "loss_sum"})
  out["eval_examples"] = int(totals["count"])
  return out


def example_batch(seq_len: int, *, options: ContrastiveOptions) -> dict:
  """A one-row batch of the configured format (zeros; every length 1)."""
  enc = options.encoder_config(dict(vocab_size=1))
  batch = {"images": jnp.zeros((1, enc.image_size, enc.image_size, enc.channels), jnp.float32),
           "tokens": jnp.zeros((1, seq_len), jnp.int32), "lengths": jnp.ones((1,), jnp.int32)}
  if options.reads_options:
    K = EXAMPLE_OPTIONS
    batch.update(option_tokens=jnp.zeros((1, K, seq_len), jnp.int32),
                 option_lengths=jnp.ones((1, K), jnp.int32), answer=jnp.zeros((1,), jnp.int32))
  return batch


def configured(options: ContrastiveOptions) -> dict:
  """The Task fields that depend on the options."""
  return dict(build_model=functools.partial(build_dual_encoder, **options.encoder),
              make_dataset=functools.partial(make_contrastive_dataset,
                                             require_options=options.reads_options),
              loss=functools.partial(loss, options=options),
              eval_sums=functools.partial(eval_sums, options=options),
              example_batch=functools.partial(example_batch, options=options))


def configure(task: Task, config) -> Task:
  return dataclasses.replace(task, **configured(options_of(config)))


TASK = register_task(Task(
    name="contrastive", evaluate=summed_evaluation(eval_metrics),
    lm_part=lambda model: model.text, drops_lm_head=True, configure=configure,
    **configured(ContrastiveOptions())))
