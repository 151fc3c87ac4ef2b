"""Image-text batches: the toy_pairs source, word-level rows ending in <eos>, options and answers,
determinism and resume, and bad records named."""

import ml_collections
import numpy as np
import pytest

from lloglin.data.contrastive import (TOY_COLOURS, ImageTextData, ImageTextRecord,
                                      ImageTextSource, make_contrastive_dataset,
                                      make_word_tokenizer, words_of)

SEQ_LEN = 8


def data_cfg(**toy):
  cfg = ml_collections.ConfigDict({"source": "toy_pairs", "toy_pairs": dict(
      image_size=8, num_options=3, num_train_examples=24, num_val_examples=8)})
  cfg.toy_pairs.update(toy)
  return cfg


def dataset(split="train", seed=0, batch_size=4, **toy):
  return make_contrastive_dataset(data_cfg(**toy), split=split, seq_len=SEQ_LEN,
                                  batch_size=batch_size, seed=seed)


def test_toy_pairs_batches_hold_captions_options_and_answers():
  ds = dataset()
  batch = next(ds)
  tok = ds.tokenizer
  assert batch["images"].shape == (4, 8, 8, 3) and batch["images"].dtype == np.float32
  assert 0 <= batch["images"].min() and batch["images"].max() <= 1
  for b in range(4):
    n = batch["lengths"][b]
    assert n == 5 and batch["tokens"][b, n - 1] == tok.eos_id  # a <colour> square . <eos>
    assert (batch["tokens"][b, n:] == 0).all()  # <pad>
    colour = tok.decode(batch["tokens"][b]).split()[1]
    square = np.abs(batch["images"][b] - np.asarray(TOY_COLOURS[colour])).max(-1) < 1e-6
    assert square.sum() >= 4  # the captioned colour's square (2 x 2 pixels at least)
    options = batch["option_tokens"][b]
    assert options.shape == (3, SEQ_LEN) and (batch["option_lengths"][b] == 5).all()
    np.testing.assert_array_equal(options[batch["answer"][b]], batch["tokens"][b])
    others = [k for k in range(3) if k != batch["answer"][b]]
    assert all((options[k] != batch["tokens"][b]).any() for k in others)  # distinct colours


def test_toy_pairs_are_deterministic_per_seed_and_resume():
  a, b, c = dataset(seed=0), dataset(seed=0), dataset(seed=1)
  first, again, other = next(a), next(b), next(c)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["images"], other["images"])
  state = a.get_state()
  expected = next(a)
  b.set_state(state)
  np.testing.assert_array_equal(next(b)["images"], expected["images"])
  assert "option_tokens" not in next(dataset(num_options=0))


def test_words_are_lower_cased_and_split_from_punctuation():
  assert words_of("There is NO dog, here.") == ["there", "is", "no", "dog", ",", "here", "."]
  tok = make_word_tokenizer(["a", "dog", "a", "<eos>"])
  assert tok.words == ("<pad>", "<bos>", "<eos>", "a", "dog")


IMAGE = np.zeros((4, 4, 3), np.float32)


@pytest.mark.parametrize("records, pattern", [
    ([], r"test records: no records"),
    ([ImageTextRecord(IMAGE, "a dog"), ImageTextRecord(IMAGE[:2], "a dog")],
     r"record 1: image of dtype float32 and shape \(2, 4, 3\); expected float .*\(4, 4, 3\)"),
    ([ImageTextRecord(IMAGE.astype(np.uint8), "a dog")], r"record 0: image of dtype uint8"),
    ([ImageTextRecord(IMAGE + 2, "a dog")], r"record 0: image values must lie in \[0, 1\]"),
    ([ImageTextRecord(IMAGE, "a cat")], r"record 0, caption: .*'cat' is not in the vocabulary"),
    ([ImageTextRecord(IMAGE, "")], r"record 0, caption: expected a non-empty text"),
    ([ImageTextRecord(IMAGE, "a dog " * 4)], r"record 0, caption: 8 words and <eos> do not fit "
                                             r"seq_len=8"),
    ([ImageTextRecord(IMAGE, "a dog", ("a", "dog"), 0), ImageTextRecord(IMAGE, "a dog")],
     r"record 1: 0 options; expected 2 like record 0"),
    ([ImageTextRecord(IMAGE, "a dog", ("a dog",), 0)], r"record 0: 1 options"),
    ([ImageTextRecord(IMAGE, "a dog", ("a", "dog"), 2)],
     r"record 0: answer=2; expected an option index in \[0, 2\)"),
    ([ImageTextRecord(IMAGE, "a dog", (), 0)], r"record 0: answer=0 without options"),
    ([ImageTextRecord(IMAGE, "a dog", ("a", "a cat"), 0)], r"record 0, option 1: .*'cat'"),
])
def test_bad_records_are_named(records, pattern):
  with pytest.raises(ValueError, match=pattern):
    ImageTextSource(ImageTextData(records, ["a", "dog"], "test records"),
                    make_word_tokenizer(["a", "dog"]), seq_len=SEQ_LEN)


def test_bad_sources_and_options_are_named():
  with pytest.raises(ValueError, match=r"data.source='mqar' has no image-text records.*"
                                       r"'toy_pairs'"):
    make_contrastive_dataset(ml_collections.ConfigDict({"source": "mqar"}), split="train",
                             seq_len=SEQ_LEN, batch_size=2, seed=0)
  with pytest.raises(ValueError, match=r"data.toy_pairs: unknown option\(s\) \['size'\]"):
    dataset(size=3)
  with pytest.raises(ValueError, match=r"data.toy_pairs.num_options=1"):
    dataset(num_options=1)
