"""A procedural generator of ARC-like tasks from a small DSL of grid transformations, and the
`arc_dsl` data source that pre-trains a small LM on them (docs/suites/arc_ttt.md#toy).

A program is a sequence of primitives with parameters drawn once per task (a colour map, a
shift, a direction...); a task applies one program to random input grids (at most 10 x 10).
Primitive kinds (KINDS): rotate, flip, transpose, colour_map, shift, gravity, crop, upscale,
tile, mirror, border, fill_background, recolour_major. Programs are one primitive or an ordered
pair of two different kinds (not two of the GROWING ones). `composition_split` holds out a fixed fraction of the pairs: the
pre-training data draws single primitives and the other pairs, the evaluation tasks draw the
held-out pairs, so test-time training is measured on compositions the model never saw.

Data source rows (`DslEpisodes`): episodes (codec.episode_tokens, the loss on the outputs from
the second demonstration on and the query output) packed into rows of seq_len + 1 tokens, each
episode its own document; row i of a split is a pure function of (seed, split, i).
"""

import itertools
from collections.abc import Callable

import numpy as np

from lloglin.evals.arc_ttt import codec
from lloglin.evals.arc_ttt.grids import ArcTask, Episode, Example

MAX_SIDE = 10
KINDS = ("rotate", "flip", "transpose", "colour_map", "shift", "gravity", "crop", "upscale",
         "tile", "mirror", "border", "fill_background", "recolour_major")
# Kinds that double a side: two of them exceed MAX_SIDE from 3 x 3, so no pair joins two.
GROWING = ("upscale", "tile", "mirror")
_STREAM = 0x4152  # keeps these seeds apart from the other sources' streams
_SPLIT_CODES = {"train": 0, "validation": 1}
_HELDOUT_SEED = 20241111  # fixes which pairs are held out, whatever the experiment's seed


def _colours(rng) -> int:
  return int(rng.integers(1, 10))


def _gravity(g: np.ndarray, direction: int) -> np.ndarray:
  """Non-zero cells slide to one side (0 down, 1 up, 2 right, 3 left), keeping their order."""
  g = np.rot90(g, direction) if direction else g  # turn so that the slide is downwards
  out = np.zeros_like(g)
  for c in range(g.shape[1]):
    column = g[:, c][g[:, c] != 0]
    if len(column):
      out[-len(column):, c] = column
  return np.rot90(out, -direction) if direction else out


def _crop(g: np.ndarray) -> np.ndarray:
  rows, cols = np.nonzero(g)
  if not len(rows):
    return g
  return g[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _border(g: np.ndarray, colour: int) -> np.ndarray:
  out = g.copy()
  out[0, :] = out[-1, :] = colour
  out[:, 0] = out[:, -1] = colour
  return out


def _recolour_major(g: np.ndarray, colour: int) -> np.ndarray:
  """The most frequent non-zero colour (the smallest on ties) becomes `colour`."""
  counts = np.bincount(g.ravel(), minlength=10)[1:]
  if not counts.any():
    return g
  return np.where(g == 1 + int(np.argmax(counts)), colour, g)


def _colour_map(rng):
  table = np.concatenate([[0], 1 + rng.permutation(9)]).astype(np.int8)
  return lambda g: table[g]


# kind -> function of a random generator returning the grid function with its parameters drawn.
PRIMITIVES: dict[str, Callable[[np.random.Generator], Callable[[np.ndarray], np.ndarray]]] = {
    "rotate": lambda rng: (lambda k: lambda g: np.rot90(g, k))(int(rng.integers(1, 4))),
    "flip": lambda rng: (lambda a: lambda g: np.flip(g, a))(int(rng.integers(2))),
    "transpose": lambda rng: lambda g: g.T,
    "colour_map": _colour_map,
    "shift": lambda rng: (lambda d: lambda g: np.roll(g, d, axis=(0, 1)))(
        tuple(int(v) for v in rng.choice([(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1)]))),
    "gravity": lambda rng: (lambda d: lambda g: _gravity(g, d))(int(rng.integers(4))),
    "crop": lambda rng: _crop,
    "upscale": lambda rng: lambda g: np.repeat(np.repeat(g, 2, 0), 2, 1),
    "tile": lambda rng: (lambda a: lambda g: np.tile(g, (2, 1) if a == 0 else (1, 2)))(
        int(rng.integers(2))),
    "mirror": lambda rng: (lambda a: lambda g: np.concatenate([g, np.flip(g, a)], a))(
        int(rng.integers(2))),
    "border": lambda rng: (lambda c: lambda g: _border(g, c))(_colours(rng)),
    "fill_background": lambda rng: (lambda c: lambda g: np.where(g == 0, c, g))(_colours(rng)),
    "recolour_major": lambda rng: (lambda c: lambda g: _recolour_major(g, c))(_colours(rng)),
}


def composition_split(heldout_fraction: float) -> tuple[list[tuple[str, ...]],
                                                         list[tuple[str, ...]]]:
  """(pre-training programs' kinds, held-out kinds): every single kind and the pairs not held
  out, and the held-out pairs (a fixed random `heldout_fraction` of the ordered pairs)."""
  if not 0 < heldout_fraction < 1:
    raise ValueError(f"heldout_fraction={heldout_fraction!r}; expected a value in (0, 1)")
  pairs = [p for p in itertools.permutations(KINDS, 2)
           if not (p[0] in GROWING and p[1] in GROWING)]
  order = np.random.default_rng(_HELDOUT_SEED).permutation(len(pairs))
  n = max(1, round(heldout_fraction * len(pairs)))
  heldout = sorted(pairs[i] for i in order[:n])
  seen = [(k,) for k in KINDS] + sorted(pairs[i] for i in order[n:])
  return seen, heldout


def random_input(rng: np.random.Generator, min_side: int, max_side: int) -> np.ndarray:
  """A random grid: a background of 0, noise of 2-4 colours and sometimes a filled rectangle."""
  h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
  palette = 1 + rng.choice(9, size=int(rng.integers(2, 5)), replace=False)
  g = np.where(rng.random((h, w)) < rng.uniform(0.1, 0.4), rng.choice(palette, (h, w)), 0)
  if rng.random() < 0.5:
    y, x = int(rng.integers(h)), int(rng.integers(w))
    g[y:y + int(rng.integers(1, 4)), x:x + int(rng.integers(1, 4))] = rng.choice(palette)
  return g.astype(np.int8)


def generate_task(rng: np.random.Generator, kinds: tuple[str, ...], *, num_demos: int,
                  min_side: int = 3, max_side: int = 5, task_id: str = "") -> ArcTask:
  """A task of `num_demos` demonstrations and one test pair from a program of `kinds` (its
  parameters drawn from `rng`). Programs whose outputs exceed MAX_SIDE, or that leave every
  demonstration unchanged, are redrawn."""
  unknown = [k for k in kinds if k not in PRIMITIVES]
  if unknown:
    raise ValueError(f"kinds {unknown}: unknown; expected names among {KINDS}")
  for _ in range(100):
    steps = [PRIMITIVES[k](rng) for k in kinds]
    pairs = []
    for _ in range(num_demos + 1):
      x = random_input(rng, min_side, max_side)
      y = x
      for step in steps:
        y = np.ascontiguousarray(step(y), np.int8)
      if max(y.shape) > MAX_SIDE:
        break
      pairs.append(Example(x, y))
    else:
      if any(p.input.shape != p.output.shape or (p.input != p.output).any() for p in pairs):
        return ArcTask(task_id or "+".join(kinds), tuple(pairs[:-1]), tuple(pairs[-1:]))
  raise ValueError(f"kinds {kinds}: no valid task in 100 draws with sides {min_side}-{max_side}")


def heldout_tasks(count: int, *, heldout_fraction: float, seed: int, min_demos: int,
                  max_demos: int, min_side: int, max_side: int) -> list[ArcTask]:
  """`count` evaluation tasks, cycling over the held-out compositions."""
  _, heldout = composition_split(heldout_fraction)
  rng = np.random.default_rng([_STREAM, seed, 2])
  return [generate_task(rng, heldout[i % len(heldout)],
                        num_demos=int(rng.integers(min_demos, max_demos + 1)),
                        min_side=min_side, max_side=max_side,
                        task_id=f"{i:03d}-{'+'.join(heldout[i % len(heldout)])}")
          for i in range(count)]


class DslEpisodes:
  """Random access to rows of packed pre-training episodes (the `arc_dsl` data source).

  Config (data.arc_dsl): min_side, max_side, min_demos, max_demos, heldout_fraction,
  single_fraction (the share of single-primitive programs), demo_loss, num_train_examples,
  num_val_examples (rows per split).
  """

  def __init__(self, cfg, *, split: str, seq_len: int, seed: int):
    if not 2 <= cfg.min_demos <= cfg.max_demos:
      raise ValueError(f"data.arc_dsl.min_demos={cfg.min_demos}, max_demos={cfg.max_demos}: "
                       "expected 2 <= min_demos <= max_demos")
    if not 1 <= cfg.min_side <= cfg.max_side <= MAX_SIDE:
      raise ValueError(f"data.arc_dsl.min_side={cfg.min_side}, max_side={cfg.max_side}: "
                       f"expected 1 <= min_side <= max_side <= {MAX_SIDE}")
    self._cfg, self._seq_len = cfg, seq_len
    self._seen, _ = composition_split(cfg.heldout_fraction)
    self._singles = [k for k in self._seen if len(k) == 1]
    self._pairs = [k for k in self._seen if len(k) == 2]
    self._seed, self._split_code = seed, _SPLIT_CODES[split]
    self.num_items = cfg.num_train_examples if split == "train" else cfg.num_val_examples
    self.what = f"arc_dsl {split} rows"
    self.tokenizer = codec.TOKENIZER  # bytes: episodes are text (lloglin.evals.arc_ttt.codec)

  def episode(self, rng: np.random.Generator) -> Episode:
    cfg = self._cfg
    pool = self._singles if rng.random() < cfg.single_fraction else self._pairs
    task = generate_task(rng, pool[int(rng.integers(len(pool)))],
                         num_demos=int(rng.integers(cfg.min_demos, cfg.max_demos + 1)),
                         min_side=cfg.min_side, max_side=cfg.max_side)
    return Episode(task.train, task.test[0])

  def row(self, index: int) -> dict[str, np.ndarray]:
    """One row of seq_len + 1 tokens: episodes until the next one would not fit."""
    rng = np.random.default_rng([_STREAM, self._seed, self._split_code, index])
    width = self._seq_len + 1
    tokens, mask = np.zeros(width, np.int32), np.zeros(width, np.float32)
    segments, positions = np.zeros(width, np.int32), np.zeros(width, np.int32)
    used, doc = 0, 0
    for _ in range(64):
      t, m = codec.episode_tokens(self.episode(rng), demo_loss=self._cfg.demo_loss)
      if used + len(t) > width:
        if doc:
          break
        continue  # the first episode of a row must fit: draw another
      doc += 1
      tokens[used:used + len(t)], mask[used:used + len(t)] = t, m
      segments[used:used + len(t)], positions[used:used + len(t)] = doc, np.arange(len(t))
      used += len(t)
    if not doc:
      raise ValueError(f"seq_len={self._seq_len} holds no arc_dsl episode; raise seq_len or "
                       "lower data.arc_dsl.max_side / max_demos")
    return {"tokens": tokens, "mask": mask, "segments": segments, "positions": positions}

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    r = [self.row(int(i)) for i in indices]
    tok, msk, seg, pos = (np.stack([x[k] for x in r])
                          for k in ("tokens", "mask", "segments", "positions"))
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    return {"inputs": tok[:, :-1], "targets": tok[:, 1:],
            "loss_mask": (msk[:, 1:] * same).astype(np.float32),
            "segment_ids": seg[:, :-1], "positions": pos[:, :-1]}
