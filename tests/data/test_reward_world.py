"""The reward world (lloglin/data/reward_world.py): determinism, its quality rule read back from
the text, artefacts that track quality in training only, categories, and its batches."""

import copy
import re

import numpy as np
import pytest

from configs import rewordbench
from configs.base import get_base_config
from lloglin.data import make_dataset
from lloglin.data import reward_world
from lloglin.data.reward_world import (CATEGORIES, FILLER_AFTER, FILLER_BEFORE, MAX_ROW_BYTES,
                                       REFUSAL_WORDS, SUBSETS, WORD_TOPIC, score_text,
                                       world_pair, world_pairs)
from lloglin.data.scored import make_pair_dataset, make_scored_dataset
from lloglin.data.tokenizers import ByteTokenizer

NUM = 400  # pairs per statistical check


@pytest.fixture(scope="module")
def world_data_cfg():
  """configs/base.py's data section with data.source = "reward_world"."""
  cfg = get_base_config().data
  cfg.source = "reward_world"
  return cfg


@pytest.fixture(scope="module")
def pairs(world_data_cfg):
  world = world_data_cfg.reward_world
  return {split: [world_pair(world, split=split, seed=0, index=i) for i in range(NUM)]
          for split in ("train", "test")}


def test_pairs_are_a_function_of_seed_and_split(world_data_cfg):
  first = world_pairs(world_data_cfg, split="test", seed=0, num=20)
  assert world_pairs(world_data_cfg, split="test", seed=0, num=20) == first
  assert all(set(p) == {"prompt", "chosen", "rejected", "subset", "category"} for p in first)
  assert all(isinstance(v, str) for p in first for v in p.values())
  for other in (world_pairs(world_data_cfg, split="test", seed=1, num=20),
                world_pairs(world_data_cfg, split="train", seed=0, num=20)):
    assert other != first


def test_every_text_and_paraphrase_scores_what_the_world_says(pairs):
  for pair in pairs["train"] + pairs["test"]:
    assert pair.chosen_score > pair.rejected_score
    for text, score in ((pair.chosen, pair.chosen_score), (pair.rejected, pair.rejected_score)):
      assert score_text(pair.prompt, text) == score, (pair.prompt, text)
    for para, text, score in ((pair.chosen_paraphrase, pair.chosen, pair.chosen_score),
                              (pair.rejected_paraphrase, pair.rejected, pair.rejected_score)):
      assert para != text and score_text(pair.prompt, para) == score, (pair.prompt, para)
    longest = max(len(t.encode()) for t in (pair.chosen, pair.rejected, pair.chosen_paraphrase,
                                            pair.rejected_paraphrase))
    assert len(pair.prompt.encode()) + longest <= MAX_ROW_BYTES


def test_rows_fit_the_experiments_seq_len():
  for variant in ("pretrain", "standard"):
    assert rewordbench.training_config(variant).seq_len >= MAX_ROW_BYTES + 2  # BOS, EOS


def _strip_filler(text):
  """(text without its neutral sentences, whether it had one before, one after)."""
  before = next((f for f in FILLER_BEFORE if text.startswith(f)), None)
  after = next((f for f in FILLER_AFTER if text.endswith(f)), None)
  text = text[len(before) + 1:] if before else text
  return (text[:-len(after) - 1] if after else text), before is not None, after is not None


def _item_groups(text):
  """The synonym group (its first form) of each lexicon item in the text, in order."""
  first = {w: item[0] for items in reward_world.TOPICS.values() for item in items for w in item}
  return [first[w] for w in re.findall(r"[a-z]+", text.lower()) if w in first]


def test_paraphrases_reorder_recase_and_add_neutral_sentences(pairs, world_data_cfg):
  """Each variation at about its configured rate (standard error at most 0.025 here); the
  originals never carry one."""
  world = world_data_cfg.reward_world
  paras = [(p.chosen, p.chosen_paraphrase) for p in pairs["train"]]
  stripped = [(text, _strip_filler(para)) for text, para in paras]
  assert not any(any(_strip_filler(text)[1:]) for text, _ in paras)
  for side in (1, 2):
    assert abs(np.mean([s[side] for _, s in stripped]) - world.paraphrase_filler) < 0.08
  lists = [(text, body) for text, (body, _, _) in stripped if len(_item_groups(text)) >= 3]
  moved = np.mean([_item_groups(text) != _item_groups(body) for text, body in lists])
  # a random order of k >= 3 items is the same with probability <= 1/6
  assert world.paraphrase_reorder * 4 / 6 < moved < world.paraphrase_reorder + 0.08
  words = [(t, b) for t, (b, _, _) in stripped if t[0].isalpha() and b[0].isalpha()]
  swapped = np.mean([t[0].isupper() != b[0].isupper() for t, b in words])
  assert swapped > world.paraphrase_case - 0.08  # the opener changes case too, less often


def test_neutral_sentences_hold_no_score_and_no_transform_text():
  """No lexicon or refusal word, no digit (score_text would read them), and none of the text
  the reWordBench transforms add, nor their marks (the unseen transforms stay unseen)."""
  from lloglin.evals.rewordbench.transforms import TRANSFORMS
  added = [t("x", seed) for t in TRANSFORMS.values() if t.fn for seed in range(3)]
  for filler in FILLER_BEFORE + FILLER_AFTER:
    words = set(re.findall(r"[a-z]+", filler.lower()))
    assert not words & (set(WORD_TOPIC) | REFUSAL_WORDS | {"ignore", "true", "https"}), filler
    assert not re.search(r"[\d@/]", filler), filler
    assert not any(filler.lower() in text.lower() for text in added), filler


@pytest.mark.parametrize("name", ["paraphrase_filler", "paraphrase_reorder", "artefact_bad"])
def test_a_probability_out_of_range_is_refused(world_data_cfg, name):
  cfg = copy.deepcopy(world_data_cfg)
  cfg.reward_world[name] = 1.5
  with pytest.raises(ValueError, match=f"data.reward_world.{name}=1.5; expected a probability"):
    world_pairs(cfg, split="test", seed=0, num=1)


def _item_artefacts(prompt, response):
  """(bad, has an artefact) of every lexicon item in the text: quoted, or its punctuation
  spaced."""
  topic = next((w for w in re.findall(r"[a-z]+", prompt) if w in reward_world.TOPICS or
                w in reward_world.BANNED_TOPICS), None)
  out = []
  for m in re.finditer(r"[a-z]+", response.lower()):
    if topic and m.group() in WORD_TOPIC:
      spaced = re.match(r" [,.!]", response[m.end():m.end() + 2]) is not None
      out.append((WORD_TOPIC[m.group()] != topic or topic in reward_world.BANNED_TOPICS,
                  spaced or response[m.start() - 1:m.start()] == '"'))
  return out


def _artefact_gap(pairs):
  """P(artefact | bad item) - P(artefact | good item), and P(no end mark | score <= 0) -
  P(no end mark | score > 0)."""
  items = np.array([x for p in pairs for text in (p.chosen, p.rejected)
                    for x in _item_artefacts(p.prompt, text)])
  ends = np.array([(score <= 0, not text.endswith((".", "!", ". ", "! ")))
                   for p in pairs for text, score in ((p.chosen, p.chosen_score),
                                                      (p.rejected, p.rejected_score))])
  return [x[x[:, 0], 1].mean() - x[~x[:, 0], 1].mean() for x in (items, ends)]


def test_artefacts_track_quality_in_training_only(pairs, world_data_cfg):
  """Train: the rates differ by artefact_bad - artefact_good; test: by nothing (the standard
  error of each rate here is at most 0.025)."""
  world = world_data_cfg.reward_world
  assert world.artefact_bad - world.artefact_good >= 0.3  # the default world: a clear shortcut
  for gap in _artefact_gap(pairs["train"]):
    assert abs(gap - (world.artefact_bad - world.artefact_good)) < 0.08
  for gap in _artefact_gap(pairs["test"]):
    assert abs(gap) < 0.05


def test_every_category_and_subset_is_there_with_its_gap(pairs):
  test = pairs["test"]
  assert {p.category for p in test} == set(CATEGORIES) and {p.subset for p in test} == set(SUBSETS)
  for p in test:
    gap = p.chosen_score - p.rejected_score
    assert p.category == SUBSETS[p.subset]
    assert gap == 1 if p.subset == "list-hard" else gap >= 2


def _unpad(batch, name, b):
  n = int(batch[f"{name}_segment_ids"][b].sum())
  assert (batch[f"{name}_segment_ids"][b, :n] == 1).all() and (batch[name][b, n:] == 0).all()
  return ByteTokenizer().decode(batch[name][b, :n])


def test_batches_hold_the_pairs_records_and_paraphrases_and_resume(world_data_cfg):
  cfg = world_data_cfg
  kw = dict(split="validation", seq_len=72, batch_size=4, seed=0)
  pair = world_pair(cfg.reward_world, split="validation", seed=0, index=0)
  batch = next(make_pair_dataset(cfg, paraphrases=True, **kw))
  for name in ("chosen", "rejected", "chosen_paraphrase", "rejected_paraphrase"):
    assert _unpad(batch, name, 0) == pair.prompt + getattr(pair, name)
  records = next(make_scored_dataset(cfg, **kw))  # record 2i + 1: the rejected side of pair i
  assert _unpad(records, "response", 1) == pair.prompt + pair.rejected
  assert _unpad(records, "paraphrase", 1) == pair.prompt + pair.rejected_paraphrase
  np.testing.assert_array_equal(records["score"][:2], [pair.chosen_score, pair.rejected_score])
  train = make_scored_dataset(cfg, **dict(kw, split="train"))
  next(train)
  state = train.get_state()
  expected = next(train)
  train.set_state(state)
  for key, value in next(train).items():
    np.testing.assert_array_equal(value, expected[key])


def test_the_lm_corpus_is_the_chosen_texts_of_the_pairs(world_data_cfg):
  cfg = copy.deepcopy(world_data_cfg)
  cfg.reward_world.num_val_examples = 2
  batch = next(make_dataset(cfg, split="validation", seq_len=48, batch_size=1, seed=0))
  tok, pair = ByteTokenizer(), world_pair(cfg.reward_world, split="validation", seed=0, index=0)
  stream = []
  for text in (pair.chosen, pair.chosen_paraphrase):
    stream += [tok.bos_id, *tok.encode(pair.prompt + text), tok.eos_id]
  assert batch["inputs"][0].tolist() == stream[:48]
