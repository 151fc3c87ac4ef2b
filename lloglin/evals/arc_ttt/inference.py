"""Augmented inference (arXiv 2411.07279, section 3.3): each test input is asked under the
identity and invertible transforms, each with the demonstrations in their order and in
`permutations - 1` random orders; greedy decoding over lloglin's decode caches (all prompts of a
task in one batch); every decoded grid is checked and mapped back with the transform's inverse.

Prompts that do not fit the model (`max_seq_len` with `max_new_tokens` to spare) lose
demonstrations from the end until they do; a prompt that does not fit with one demonstration
(none under direct I/O) is skipped.
"""

import dataclasses

import numpy as np

from lloglin.evals.arc_ttt import augment, codec
from lloglin.evals.arc_ttt.grids import ArcTask, Example
from lloglin.inference.generate import generate


@dataclasses.dataclass
class Query:
  """One prompt: which test input, the transform, and the prompt tokens."""
  test_index: int
  transform: augment.Transform
  tokens: list[int]


def fitted_prompt(demos, query_input, budget: int, *, direct_io: bool) -> list[int] | None:
  """Prompt tokens with as many leading demonstrations as fit `budget` tokens (None if none
  fits; direct I/O prompts have none)."""
  kept = () if direct_io else tuple(demos)
  while True:
    tokens = codec.prompt_tokens(kept, query_input)
    if len(tokens) <= budget:
      return tokens
    if len(kept) <= 1:
      return None
    kept = kept[:-1]


def build_queries(task: ArcTask, *, transforms: list[augment.Transform], permutations: int,
                  budget: int, direct_io: bool, seed: int) -> list[Query]:
  rng = np.random.default_rng(seed)
  queries = []
  for index, example in enumerate(task.test):
    for t in transforms:
      orders = [np.arange(len(task.train))]
      if not direct_io:  # without demonstrations their order does not exist
        orders += [rng.permutation(len(task.train)) for _ in range(permutations - 1)]
      for order in orders:
        demos = [task.train[i] for i in order]
        moved = [Example(t(d.input), t(d.output)) for d in demos]
        tokens = fitted_prompt(moved, t(example.input), budget, direct_io=direct_io)
        if tokens is not None:
          queries.append(Query(index, t, tokens))
  return queries


def candidates(model, task: ArcTask, *, transforms, permutations: int, max_new_tokens: int,
               direct_io: bool = False, seed: int = 0) -> tuple[list[dict], int]:
  """Per test input {transform name: [decoded grids mapped back]} and the number of prompts
  that were skipped for length."""
  budget = model.cfg.max_seq_len - max_new_tokens
  queries = build_queries(task, transforms=transforms, permutations=permutations,
                          budget=budget, direct_io=direct_io, seed=seed)
  skipped = len(task.test) * len(transforms) * (1 if direct_io else permutations) - len(queries)
  groups = [{t.name: [] for t in transforms} for _ in task.test]
  if not queries:
    return groups, skipped
  outputs = generate(model, [q.tokens for q in queries], max_new_tokens,
                     stop_tokens=[codec.STOP_TOKEN], impl="plain")
  for q, out in zip(queries, outputs, strict=True):
    grid = codec.decode_output(out)
    if grid is not None:
      groups[q.test_index][q.transform.name].append(q.transform.invert(grid))
  return groups, skipped
