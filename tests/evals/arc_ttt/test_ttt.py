"""Test-time training (vmapped adapters, exact resume), the votes, and the DSL data source."""

import types

import jax
import numpy as np
import pytest

from lloglin import optim
from lloglin.data import arc_codec as codec, arc_dsl as dsl, make_dataset
from lloglin.data.arc_grids import ArcTask, Example
from lloglin.evals.arc_ttt import augment, inference, ttt, ttt_data, voting
from lloglin.models import ModelConfig, build_model


def ttt_config(**kw):
  base = dict(rank=2, alpha=4.0, targets=r"(q_proj|v_proj|up)/kernel$", learning_rate=1e-2,
              warmup_steps=1, epochs=1, batch_size=2, weight_decay=0.01, grad_clip_norm=1.0,
              demo_loss=True, seed=0)
  return types.SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def lm():
  model = build_model(ModelConfig(vocab_size=258, d_model=16, num_layers=1, num_heads=2,
                                  num_kv_heads=2, head_dim=8, mlp_dim=32, max_seq_len=64))
  return ttt.FrozenLM.of(model)


def episodes(num_demos, seed):
  rng = np.random.default_rng(seed)
  demos = tuple(Example(g, g.T.copy()) for g in (rng.integers(0, 10, (2, 2)).astype(np.int8)
                                                 for _ in range(num_demos)))
  return ttt_data.ttt_episodes(demos, max_examples=4, max_tokens=63, seed=seed,
                               augment_data=False)


def test_vmapped_adapters_equal_separate_runs_and_resume_exactly(lm, tmp_path):
  cfg = ttt_config()
  tasks = [episodes(3, 0), episodes(2, 1)]  # 4 and 2 episodes: 2 and 1 steps of batch 2
  assert [ttt.steps_for(len(e), cfg) for e in tasks] == [2, 1]
  curve = []
  together, losses = ttt.train_adapters(lm, tasks, cfg, curve=curve)
  assert all(np.isfinite(losses))
  # The curve has a row per step; adapter 1's last loss is that of its only step.
  assert len(curve) == 2 and curve[-1][0] == losses[0] and curve[0][1] == losses[1]
  # Adapter 0 trained alone is adapter 0 trained beside adapter 1, which stops after its step.
  alone, _ = ttt.train_adapters(lm, [tasks[0]], cfg)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               optim.adapter_at(alone, 0), optim.adapter_at(together, 0))
  # Interrupted after one step (checkpointed), then resumed: exactly the uninterrupted run.
  ckpt = str(tmp_path / "ttt")
  ttt.train_adapters(lm, tasks, cfg, checkpoint_dir=ckpt, checkpoint_every=1, stop_after=1)
  resumed, _ = ttt.train_adapters(lm, tasks, cfg, checkpoint_dir=ckpt, checkpoint_every=1)
  jax.tree.map(np.testing.assert_array_equal, resumed, together)
  # The adapters moved, and an entry without episodes keeps b = 0 (the base model).
  fresh, _ = ttt.train_adapters(lm, [tasks[1], []], cfg)
  bs = [x.b for x in jax.tree.leaves(fresh, is_leaf=optim.is_lora)]
  assert len(bs) == 3
  assert all(float(np.abs(b[0]).max()) > 0 and float(np.abs(b[1]).max()) == 0 for b in bs)
  # Started from a trained adapter (shared_then_task): an entry without episodes keeps it
  # exactly, one with episodes moves on from it (and differs from its fresh-start run).
  start = optim.adapter_at(fresh, 0)
  refined, _ = ttt.train_adapters(lm, [tasks[1], []], cfg, start=start)
  jax.tree.map(np.testing.assert_array_equal, optim.adapter_at(refined, 1), start)
  moved = [float(np.abs(x - y).max()) for x, y in zip(
      jax.tree.leaves(optim.adapter_at(refined, 0)), jax.tree.leaves(start))]
  assert max(moved) > 0
  assert not all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(optim.adapter_at(refined, 0)), jax.tree.leaves(optim.adapter_at(fresh, 0))))


def test_batches_visit_every_episode_once_per_epoch():
  seen = np.concatenate([ttt.batch_indices(5, 2, step, seed=3, index=0) for step in range(5)])
  assert sorted(seen[:5].tolist()) == list(range(5)) and sorted(seen[5:].tolist()) == list(
      range(5))
  lr = [float(ttt.lr_at(s, 4, ttt_config(warmup_steps=1))) for s in range(4)]
  assert lr[0] == pytest.approx(1e-2) and lr[1] == pytest.approx(1e-2) and lr[3] < lr[2] < lr[1]


def g(*rows):
  return np.array(rows, np.int8)


def test_votes():
  A, B, C, W, V = g([1, 2]), g([2, 1]), g([3, 3]), g([4, 4]), g([5, 5])
  # Two distinct answers whenever there are two distinct candidates.
  top = voting.hierarchical_vote({"identity": [A, A, A], "flip0": [A, B]})
  assert len(top) == 2 and voting.contains(top[:1], A) and voting.contains(top[1:], B)
  assert len(voting.hierarchical_vote({"identity": [A, B]})) == 2
  # A tie between groups goes to the grid the identity group prefers.
  for order in ([A, B], [B, A]):
    groups = {"identity": [A], "flip0": [B]} if order[0] is A else {"flip0": [B],
                                                                   "identity": [A]}
    assert voting.contains(voting.hierarchical_vote(groups, attempts=1), A)
    assert voting.contains(voting.flat_vote(groups, attempts=1), A)
  # One group repeating a wrong answer sways the flat vote, not the hierarchical one: C is the
  # only answer that several transforms agree on.
  groups = {"identity": [W, W, W, W], "flip0": [V, V, V], "flip1": [C], "rotate90": [C]}
  assert not voting.contains(voting.flat_vote(groups), C)
  assert voting.contains(voting.hierarchical_vote(groups, attempts=1), C)
  rows, cols = voting.majority_grids([g([1, 1], [2, 2]), g([1, 1], [3, 3]), g([0, 1], [3, 3])])
  np.testing.assert_array_equal(rows, [[1, 1], [3, 3]])
  np.testing.assert_array_equal(cols, [[1, 1], [2, 3]])  # column 0: three ways, the first
  assert voting.hierarchical_vote({"identity": []}) == []


def test_dsl_tasks_and_the_pre_training_rows():
  seen, heldout = dsl.composition_split(0.25)
  assert not set(seen) & set(heldout) and all(len(k) == 2 for k in heldout)
  assert not any(k[0] in dsl.GROWING and k[1] in dsl.GROWING for k in seen + heldout
                 if len(k) == 2)
  tasks = dsl.heldout_tasks(4, heldout_fraction=0.25, seed=0, min_demos=2, max_demos=3,
                            min_side=3, max_side=4)
  again = dsl.heldout_tasks(4, heldout_fraction=0.25, seed=0, min_demos=2, max_demos=3,
                            min_side=3, max_side=4)
  for t, u in zip(tasks, again, strict=True):
    assert t.id == u.id and tuple(t.id.split("-", 1)[1].split("+")) in heldout
    assert 2 <= len(t.train) <= 3 and len(t.test) == 1
    for e, f in zip(t.train + t.test, u.train + u.test):
      np.testing.assert_array_equal(e.output, f.output)
      assert max(e.output.shape) <= dsl.MAX_SIDE
  with pytest.raises(ValueError, match=r"kinds \['spin'\]: unknown"):
    dsl.generate_task(np.random.default_rng(0), ("spin",), num_demos=2)
  data = types.SimpleNamespace(
      source="arc_dsl", arc_dsl=types.SimpleNamespace(
          min_side=3, max_side=3, min_demos=2, max_demos=2, heldout_fraction=0.25,
          single_fraction=0.5, demo_loss=True, num_train_examples=8, num_val_examples=2))
  batch = next(make_dataset(data, split="train", seq_len=200, batch_size=2, seed=0))
  assert batch["inputs"].shape == (2, 200)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  seg, pos, mask = batch["segment_ids"], batch["positions"], batch["loss_mask"]
  assert seg[:, 0].tolist() == [1, 1] and (pos[seg == 0] == 0).all()
  starts = (pos == 0) & (seg > 0)
  assert (batch["inputs"][starts] == codec.TOKENIZER.bos_id).all()  # each episode has its BOS
  assert (mask[seg == 0] == 0).all() and mask.sum() > 0
  text = codec.TOKENIZER.decode(batch["targets"][0][mask[0] == 1])
  assert set(text) <= set("0123456789\n#")  # the loss is on output grids only


def test_augmented_answers_are_mapped_back_by_the_inverse(monkeypatch):
  """A model that copies the query input answers the identity task right under every transform
  once its answers are mapped back (a wrong inverse, e.g. rotating forward twice, would not)."""
  def copy_query(model, prompts, max_new_tokens, **_):
    texts = [codec.TOKENIZER.decode(p[1:]) for p in prompts]
    query = [t.removesuffix(codec.ARROW).rsplit(codec.END + codec.SEPARATOR, 1)[-1]
             for t in texts]
    return [codec.TOKENIZER.encode(q + codec.END) for q in query]

  monkeypatch.setattr(inference, "generate", copy_query)
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 10, (2, 3)).astype(np.int8), rng.integers(0, 10, (3, 2)).astype(np.int8)
  task = ArcTask("copy", (Example(y, y),), (Example(x, x),))
  names = [t.name for t in augment.INFERENCE_TRANSFORMS]
  model = types.SimpleNamespace(cfg=types.SimpleNamespace(max_seq_len=256))
  groups, skipped = inference.candidates(model, task, transforms=augment.by_name(names),
                                         permutations=1, max_new_tokens=16)
  assert skipped == 0 and list(groups[0]) == list(names)
  for name, answers in groups[0].items():
    assert len(answers) == 1, name
    np.testing.assert_array_equal(answers[0], x, err_msg=name)
