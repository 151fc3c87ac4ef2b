"""A trained dual encoder (task "contrastive") as the negbench suite's encoder: images and texts
to embeddings, with the tokenizer of the data source the run was trained on."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lloglin.data.contrastive import SOURCES, encode_text, make_word_tokenizer, pad_rows
from lloglin.evals.userfn import import_function
from lloglin.training.loading import load_model


class DualEncoderEncoder:
  """`encode_images(images_NHWC)` and `encode_texts(texts)` of a dual encoder; texts are
  tokenised as its training data was (words of the source, <eos> last). Calls run jitted on
  batches padded to `batch_size` rows, so each shape compiles once."""

  def __init__(self, model, config: dict, *, batch_size: int):
    if config.get("task") != "contrastive":
      raise ValueError(f"checkpoint: negbench evaluates a dual encoder (task 'contrastive'), got "
                       f"a run of task {config.get('task', 'lm')!r}")
    data_cfg = ml_collections.ConfigDict(config["data"])
    if data_cfg.source not in SOURCES:
      raise ValueError(f"checkpoint: its data.source={data_cfg.source!r} is no image-text "
                       f"source; expected one of {sorted(SOURCES)}")
    words = SOURCES[data_cfg.source](data_cfg, split="validation", seed=config["seed"]).words
    self.tokenizer = make_word_tokenizer(words)
    self.seq_len = int(config["model"]["max_seq_len"])
    self.image_size = int(model.cfg.image_size)
    self.batch_size = batch_size
    self._model = model
    self._images = nnx.jit(lambda m, x: m.encode_image(x))
    self._texts = nnx.jit(lambda m, t, n: m.encode_text(t, n))

  def _padded(self, fn, *arrays):
    n = len(arrays[0])
    out = []
    for start in range(0, n, self.batch_size):
      chunk = [a[start:start + self.batch_size] for a in arrays]
      pad = self.batch_size - len(chunk[0])
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
      out.append(np.asarray(jax.device_get(fn(self._model, *map(jnp.asarray, chunk))))
                 [:self.batch_size - pad])
    return np.concatenate(out)

  def encode_images(self, images_NHWC) -> np.ndarray:
    return self._padded(self._images, np.asarray(images_NHWC, np.float32))

  def encode_texts(self, texts) -> np.ndarray:
    rows = [encode_text(self.tokenizer, t, self.seq_len, where=f"negbench text {t!r}")
            for t in texts]
    tokens, lengths = pad_rows(rows, self.seq_len)
    return self._padded(self._texts, tokens, lengths)


def checkpoint_encoder(checkpoint: str, *, batch_size: int) -> DualEncoderEncoder:
  model, config = load_model(checkpoint)
  return DualEncoderEncoder(model, config, batch_size=batch_size)


def make_encoder(cfg, checkpoint: str | None, *, suite: str, use: str):
  """The encoder a suite's settings `cfg` name: `cfg.encoder` = "module:function" (called with
  the settings), else the checkpoint's dual encoder (a contrastive run or its export). `use` says
  what needs it, for the error when neither is given."""
  if cfg.encoder:
    return import_function(cfg.encoder, what=f"{suite}.encoder")(cfg)
  if not checkpoint:
    raise ValueError(f"checkpoint: {use} uses a trained dual encoder; pass eval.py --checkpoint "
                     f"DIR (a contrastive run or its export), or name one with "
                     f"--config.{suite}.encoder=module:function")
  return checkpoint_encoder(checkpoint, batch_size=cfg.batch_size)
