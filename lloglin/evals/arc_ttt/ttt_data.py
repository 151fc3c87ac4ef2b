"""The test-time training data of one task (arXiv 2411.07279, section 3.1 / Table 5).

1. Leave-one-out: for each demonstration j an episode whose demos are the others and whose query
   is demonstration j (K demonstrations give K episodes).
2. Each episode under the identity and every training transform (`augment.ttt_transforms`);
   results with a grid over 30 x 30 are dropped.
3. Once per transformed episode a colour permutation (0 fixed) and a shuffle of the demos.
4. Duplicates dropped; if fewer than `max_examples` remain, leave-two-out episodes (demos: all
   but two; query: one of the two) built the same way top them up; at most `max_examples` are
   kept (a random subset), and episodes longer than `max_tokens` are dropped.
`augment=False` keeps step 1 alone (the "no augmentation" ablation); `direct_io=True` makes
every episode a bare input-output pair with no demonstrations (the "direct I/O" ablation).
"""

import itertools

import numpy as np

from lloglin.evals.arc_ttt import augment, codec
from lloglin.evals.arc_ttt.grids import Episode, Example


def leave_one_out(demos: tuple[Example, ...]) -> list[Episode]:
  """K episodes from K demonstrations (K >= 2; with one there is nothing to condition on)."""
  if len(demos) < 2:
    return []
  return [Episode(demos[:j] + demos[j + 1:], demos[j]) for j in range(len(demos))]


def leave_two_out(demos: tuple[Example, ...]) -> list[Episode]:
  """K (K - 1) episodes: demos all but i and j, query j (K >= 3)."""
  if len(demos) < 3:
    return []
  return [Episode(tuple(d for k, d in enumerate(demos) if k not in (i, j)), demos[j])
          for i, j in itertools.permutations(range(len(demos)), 2)]


def augmented(base: list[Episode], rng: np.random.Generator) -> list[Episode]:
  """Steps 2 and 3 on `base`: every transform (identity first), then a colour permutation and a
  demo shuffle each."""
  out = []
  for episode in base:
    for t in [augment.IDENTITY] + augment.ttt_transforms(rng):
      moved = augment.transform_episode(episode, t)
      if not augment.fits(moved):
        continue
      table = augment.colour_permutation(rng)
      moved = augment.transform_episode(moved, lambda g: augment.permute_colours(g, table))
      out.append(augment.shuffle_demos(moved, rng))
  return out


def _unique(episodes: list[Episode], seen: set) -> list[Episode]:
  out = []
  for e in episodes:
    key = codec.prompt_text(e.demos, e.query.input) + codec.grid_text(e.query.output)
    if key not in seen:
      seen.add(key)
      out.append(e)
  return out


def ttt_episodes(demos: tuple[Example, ...], *, max_examples: int, max_tokens: int,
                 seed: int = 0, augment_data: bool = True, direct_io: bool = False,
                 leave_two_out_top_up: bool = True) -> list[Episode]:
  """The test-time training episodes of a task with demonstrations `demos` (module docstring)."""
  if max_examples < 1:
    raise ValueError(f"max_examples={max_examples!r}; expected a positive int")
  rng = np.random.default_rng(seed)
  if direct_io:
    base, extra = [Episode((), d) for d in demos], []
  else:
    base = leave_one_out(demos)
    extra = leave_two_out(demos) if leave_two_out_top_up else []
  build = (lambda eps: augmented(eps, rng)) if augment_data else (lambda eps: eps)
  seen = set()
  short = lambda eps: [e for e in eps if codec.episode_length(e) <= max_tokens]
  episodes = _subset(short(_unique(build(base), seen)), max_examples, rng)
  if extra and len(episodes) < max_examples:
    episodes += _subset(short(_unique(build(extra), seen)), max_examples - len(episodes), rng)
  return episodes


def _subset(episodes: list[Episode], n: int, rng: np.random.Generator) -> list[Episode]:
  """At most n of the episodes (a random subset, in their order)."""
  if len(episodes) <= n:
    return episodes
  return [episodes[i] for i in np.sort(rng.choice(len(episodes), n, replace=False))]
