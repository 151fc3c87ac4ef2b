"""The in-context skill probe: its program groups and its scoring (with a stand-in generator that
answers some programs right, so no model is trained)."""

import types

import pytest

from lloglin.data import arc_codec as codec, arc_dsl as dsl
from lloglin.evals.arc_ttt import probe

SIZES = dict(heldout_fraction=0.25, min_side=3, max_side=3, num_demos=2)


def test_groups_split_the_programs_and_hold_out_only_pairs_of_seen_primitives():
  groups = probe.programs(0.25)
  singles = {k for (k,) in groups["single"]}
  assert singles == set(dsl.KINDS)
  assert not set(groups["seen_pair"]) & set(groups["heldout_pair"])
  assert all(len(p) == 2 and set(p) <= singles for p in groups["heldout_pair"])


def test_skill_scores_each_program_by_its_decoded_answers(monkeypatch):
  tasks = probe.probe_tasks(per_kind=2, seed=3, **SIZES)
  # The stand-in answers single primitives right, seen pairs with text that is no grid, and
  # held-out pairs with the query input (right only where the program left it unchanged).
  answers = {}
  for group, _, task in tasks:
    grid = task.test[0].output if group == "single" else task.test[0].input
    text = "1x2" + codec.END if group == "seen_pair" else codec.grid_text(grid) + codec.END
    answers[tuple(codec.prompt_tokens(task.train, task.test[0].input))] = (
        codec.TOKENIZER.encode(text))

  def fake_generate(model, prompts, max_new_tokens, **kw):
    assert len(prompts) <= 64  # the probe's batch size
    return [answers[tuple(p)] for p in prompts]

  monkeypatch.setattr(probe, "generate", fake_generate)
  model = types.SimpleNamespace(cfg=types.SimpleNamespace(max_seq_len=2048))
  result = probe.skill(model, per_kind=2, seed=3, max_new_tokens=110, **SIZES)
  assert result["single"]["solved"] == 1.0
  assert set(result["single"]["per_kind"]) == set(dsl.KINDS)
  assert result["seen_pair"]["solved"] == 0.0
  unchanged = [t.test[0].input.shape == t.test[0].output.shape
               and (t.test[0].input == t.test[0].output).all()
               for g, _, t in tasks if g == "heldout_pair"]
  assert result["heldout_pair"]["solved"] == pytest.approx(sum(unchanged) / len(unchanged))
  for group, programs in probe.programs(0.25).items():
    assert len(result[group]["per_kind"]) == len(programs)

def test_a_prompt_longer_than_the_model_counts_as_unsolved(monkeypatch):
  monkeypatch.setattr(probe, "generate", lambda model, prompts, *a, **kw: pytest.fail(
      "no prompt fits: nothing to generate"))
  model = types.SimpleNamespace(cfg=types.SimpleNamespace(max_seq_len=120))
  result = probe.skill(model, per_kind=1, seed=0, max_new_tokens=110, **SIZES)
  assert all(r["solved"] == 0.0 for r in result.values())
  with pytest.raises(ValueError, match="per_kind=0"):
    probe.probe_tasks(per_kind=0, seed=0, **SIZES)
