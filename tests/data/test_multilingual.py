"""Tests for lloglin/data/multilingual.py: the synthetic world, its pairs and its data source."""

import numpy as np
import pytest

from lloglin.data import make_dataset, make_tokenizer
from lloglin.data import multilingual as world


def _sentences(document: str) -> list[tuple[str, str]]:
  """(text, kind) of every sentence or sum of a document, by its end mark."""
  out, words = [], []
  for w in document.split():
    words.append(w)
    kind = {".": "dominant", "ne": "minor", ";": "digits"}.get(w)
    if kind:
      if kind == "dominant" and "equals" in words:
        kind = "words"
      out.append((" ".join(words), kind))
      words = []
  assert not words, document
  return out


def _sum(text: str, form: str) -> tuple[int, int, int]:
  """(c, a, b) of "c = a + b", read independently of the module's renderer."""
  w = text.split()
  if form == "digits":
    eq = w.index("=")
    assert w[eq + 2] == "+" and w[-1] == ";" and len(w) == eq + 5
    return int("".join(w[:eq])), int(w[eq + 1]), int(w[eq + 3])
  assert (w[1], w[3], w[5]) == ("equals", "plus", ".") and len(w) == 6
  return tuple(world.NUMBER_WORDS.index(x) for x in (w[0], w[2], w[4]))


def test_pairs_are_translations_by_construction():
  """Round trip: both sides of a language pair parse to one latent sentence, which renders back
  to each side; the minor side reorders the words (verb last, adjective after its noun) and
  shares none with the dominant side. Arithmetic pairs state the same correct sum."""
  for dominant, minor in world.parallel_pairs("language", 200, seed=3):
    latent = world.parse(dominant, "dominant")
    assert world.parse(minor, "minor") == latent
    assert world.render(latent, "dominant") == dominant and world.render(latent, "minor") == minor
    assert not set(dominant.split()) & set(minor.split())
    content = [world.TO_DOMINANT[w] for w in minor.split() if w in world.TO_DOMINANT]
    assert content != [w for w in dominant.split() if w not in ("the", ".")]
    assert sorted(content) == sorted(w for w in dominant.split() if w not in ("the", "."))
    for text, lang in ((dominant, "dominant"), (minor, "minor")):  # a prompt before the mood
      prompt = world.before_object_adjective(text, lang).split()
      assert text.split()[len(prompt)] in world.SENTIMENT and text.startswith(" ".join(prompt))
      assert sum(w in world.SENTIMENT for w in prompt) == 1  # the subject's adjective only
  for digits, words in world.parallel_pairs("arithmetic", 100, seed=3):
    c, a, b = _sum(digits, "digits")
    assert c == a + b and _sum(words, "words") == (c, a, b)
  for positive, negative in world.mood_pairs(20, "minor", seed=1):
    p, n = world.parse(positive, "minor"), world.parse(negative, "minor")
    assert p._replace(subject_adjective=0, object_adjective=0) == n._replace(
        subject_adjective=0, object_adjective=0)
    assert {world.SENTIMENT[w] for w in positive.split() if w in world.SENTIMENT} == {1}
    assert {world.SENTIMENT[w] for w in negative.split() if w in world.SENTIMENT} == {-1}


def test_documents_follow_the_settings_and_every_sentence_parses(data_cfg):
  cfg = data_cfg.multilingual
  cfg.update(num_train_documents=2000, arithmetic_share=0.1, parallel_share=0.05,
             switch_share=0.1, minor_share=0.1)
  docs = world.documents(cfg, split="train", seed=0)
  kinds = []
  for doc in docs:
    parts = _sentences(doc)
    langs = {k for _, k in parts}
    latents = []
    for text, kind in parts:
      if kind in world.LANGUAGES:
        latents.append(world.parse(text, kind))
      else:
        c, a, b = _sum(text, kind)
        assert c == a + b
    moods = {world.SENTIMENT[w] for w in doc.split() if w in world.SENTIMENT}
    assert len(moods) <= 1  # a story has one mood
    if langs == set(world.LANGUAGES):  # each sentence then its translation, or code-switched
      alternate = [k for _, k in parts[::2]] == [parts[0][1]] * (len(parts) // 2) and len(set(
          k for _, k in parts[1::2])) == 1 and latents[::2] == latents[1::2]
      kinds.append("parallel" if alternate else "switched")
    else:
      kinds.append("arithmetic" if langs <= {"digits", "words"} else langs.pop())
  share = lambda k: kinds.count(k) / len(kinds)
  assert abs(share("arithmetic") - 0.1) < 0.025 and abs(share("parallel") - 0.05) < 0.015
  assert 0.07 < share("switched") < 0.1  # a story drawn with one language is not counted
  assert abs(share("minor") / (share("minor") + share("dominant")) - 0.1) < 0.025
  assert world.document(cfg, split="train", seed=0, index=7) == docs[7]
  assert world.documents(cfg, split="validation", seed=0)[:50] != docs[:50]


def test_the_data_source_packs_world_text_with_its_word_tokenizer(data_cfg):
  data_cfg.source = "multilingual"
  data_cfg.multilingual.update(num_train_documents=300, num_val_documents=50, minor_share=0.5)
  ds = make_dataset(data_cfg, split="train", seq_len=32, batch_size=8, seed=1)
  tok = make_tokenizer(data_cfg)
  assert ds.vocab_size == tok.vocab_size == len(world.VOCABULARY)
  batch = next(ds)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  words = set(tok.decode(batch["inputs"].ravel()).split())
  assert words <= set(world.VOCABULARY) and words & set(world.WORD_TYPES["minor"])
  text = "the happy cat sees the warm apple ."
  assert tok.decode([tok.bos_id] + tok.encode(text) + [tok.eos_id]) == text
  with pytest.raises(ValueError, match=r"the word 'kat' is not in the vocabulary"):
    tok.encode("the kat")


@pytest.mark.parametrize("key, value, match", [
    ("minor_share", 1.5, r"minor_share=1.5; expected a share in \[0, 1\]"),
    ("parallel_share", 0.85, r"arithmetic_share \+ parallel_share \+ switch_share = 1.05"),
    ("min_sentences", 0, r"min_sentences=0, max_sentences=6"),
])
def test_bad_settings_are_named(data_cfg, key, value, match):
  data_cfg.multilingual[key] = value
  with pytest.raises(ValueError, match=match):
    world.documents(data_cfg.multilingual, split="validation", seed=0)


def test_parse_refuses_text_of_another_language():
  dominant, minor = world.parallel_pairs("language", 1, seed=0)[0]
  with pytest.raises(ValueError, match=r"is not a minor sentence of the world"):
    world.parse(dominant, "minor")
  with pytest.raises(ValueError, match=r"language='french'"):
    world.render(world.parse(minor, "minor"), "french")
