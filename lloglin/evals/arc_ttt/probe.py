"""In-context skill of a pre-trained LM on the DSL's programs, before any test-time training.

The paper's gain rests on a model that knows the parts (the single primitives) and is taught
their composition by TTT. `skill` measures that premise: for each program of a group (the single
primitives, the pre-training pairs, the held-out pairs; lloglin/data/arc_dsl.py) `per_kind`
fresh tasks are asked once, demonstrations in their order, no transform, greedy, and a task
counts when the decoded grid is its test output.
"""

import numpy as np

from lloglin.data import arc_codec as codec, arc_dsl as dsl
from lloglin.data.arc_grids import ArcTask
from lloglin.evals.arc_ttt import inference, voting
from lloglin.inference.generate import generate

_PROBE_STREAM = 0x5052  # keeps the probe's tasks apart from the suite's and the pre-training's


def programs(heldout_fraction: float) -> dict[str, list[tuple[str, ...]]]:
  """{group: programs' kinds}: "single", "seen_pair" (in pre-training), "heldout_pair"."""
  seen, heldout = dsl.composition_split(heldout_fraction)
  return {"single": [k for k in seen if len(k) == 1],
          "seen_pair": [k for k in seen if len(k) == 2], "heldout_pair": heldout}


def probe_tasks(*, per_kind: int, seed: int, heldout_fraction: float, min_side: int,
                max_side: int, num_demos: int) -> list[tuple[str, str, ArcTask]]:
  """(group, program name "a+b", task) for `per_kind` tasks of every program of every group; a
  pure function of its arguments."""
  if per_kind < 1:
    raise ValueError(f"per_kind={per_kind!r}; expected at least 1 task per program")
  rng = np.random.default_rng([_PROBE_STREAM, seed])
  return [(group, "+".join(kinds), dsl.generate_task(rng, kinds, num_demos=num_demos,
                                                      min_side=min_side, max_side=max_side))
          for group, kinds_list in programs(heldout_fraction).items()
          for kinds in kinds_list for _ in range(per_kind)]


def skill(model, *, per_kind: int, seed: int, heldout_fraction: float, min_side: int,
          max_side: int, num_demos: int, max_new_tokens: int, batch_size: int = 64) -> dict:
  """{group: {"solved": fraction of its tasks, "per_kind": {"a+b": fraction}}} on the tasks of
  `probe_tasks`; a prompt that does not fit the model counts as unsolved."""
  tasks = probe_tasks(per_kind=per_kind, seed=seed, heldout_fraction=heldout_fraction,
                      min_side=min_side, max_side=max_side, num_demos=num_demos)
  budget = model.cfg.max_seq_len - max_new_tokens
  asked = [(group, name, task.test[0].output,
            inference.fitted_prompt(task.train, task.test[0].input, budget, direct_io=False))
           for group, name, task in tasks]
  answers = [None] * len(asked)
  fitting = [i for i, a in enumerate(asked) if a[3] is not None]
  for start in range(0, len(fitting), batch_size):
    rows = fitting[start:start + batch_size]
    outputs = generate(model, [asked[i][3] for i in rows], max_new_tokens,
                       stop_tokens=[codec.STOP_TOKEN], impl="plain")
    for i, out in zip(rows, outputs, strict=True):
      answers[i] = codec.decode_output(out)
  result = {}
  for group in programs(heldout_fraction):
    per_kind_hits: dict[str, list[bool]] = {}
    for (g, name, output, _), answer in zip(asked, answers):
      if g == group:
        per_kind_hits.setdefault(name, []).append(
            answer is not None and voting.contains([answer], output))
    hits = [h for v in per_kind_hits.values() for h in v]
    result[group] = {"solved": float(np.mean(hits)),
                     "per_kind": {k: float(np.mean(v)) for k, v in per_kind_hits.items()}}
  return result
