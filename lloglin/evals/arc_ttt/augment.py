"""Grid transformations with inverses, colour permutations and demonstration shuffles
(arXiv 2411.07279, Table 5 and section 5.5; docs/suites/arc_ttt.md says which readings we chose).

A `Transform` maps a grid to a grid and has a left inverse: `t.invert(t(g)) == g` for every grid
(for resolution changes and reflections, which enlarge a grid, the inverse takes the original
back out of the enlarged one). A task is transformed by applying the same transform to every
input and output grid.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from lloglin.evals.arc_ttt.grids import MAX_SIDE, Episode, Example


@dataclasses.dataclass(frozen=True)
class Transform:
  name: str
  forward: Callable[[np.ndarray], np.ndarray] = dataclasses.field(repr=False)
  backward: Callable[[np.ndarray], np.ndarray] = dataclasses.field(repr=False)

  def __call__(self, grid: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(self.forward(np.asarray(grid)), np.int8)

  def invert(self, grid: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(self.backward(np.asarray(grid)), np.int8)


IDENTITY = Transform("identity", lambda g: g, lambda g: g)


def rotate(degrees: int) -> Transform:
  """Counter-clockwise rotation by 90, 180 or 270 degrees."""
  if degrees not in (90, 180, 270):
    raise ValueError(f"degrees={degrees!r}; expected 90, 180 or 270")
  k = degrees // 90
  return Transform(f"rotate{degrees}", lambda g: np.rot90(g, k), lambda g: np.rot90(g, -k))


def flip(axis: int) -> Transform:
  """Flip along `axis` (0: upside down, 1: left to right); its own inverse."""
  _check_axis(axis, (0, 1))
  return Transform(f"flip{axis}", lambda g: np.flip(g, axis), lambda g: np.flip(g, axis))


TRANSPOSE = Transform("transpose", lambda g: g.T, lambda g: g.T)


def reflect(axis: int, reverse: bool) -> Transform:
  """The grid joined with its mirror image along `axis` (the mirror first when `reverse`)."""
  _check_axis(axis, (0, 1))

  def forward(g):
    mirror = np.flip(g, axis)
    return np.concatenate((mirror, g) if reverse else (g, mirror), axis=axis)

  def backward(g):
    half = g.shape[axis] // 2
    return np.take(g, np.arange(half, 2 * half) if reverse else np.arange(half), axis=axis)

  return Transform(f"reflect{axis}{'r' if reverse else ''}", forward, backward)


def translate(dy: int, dx: int) -> Transform:
  """Cyclic shift by (dy, dx) cells: what leaves one side comes back on the other."""
  return Transform(f"translate({dy},{dx})", lambda g: np.roll(g, (dy, dx), axis=(0, 1)),
                   lambda g: np.roll(g, (-dy, -dx), axis=(0, 1)))


def upscale(factor_y: int, factor_x: int) -> Transform:
  """Each cell becomes a factor_y x factor_x block (IncreaseResolution / Height / Width)."""
  names = {(2, 2): "resolution2", (2, 1): "height2", (1, 2): "width2"}
  name = names.get((factor_y, factor_x), f"upscale({factor_y},{factor_x})")
  return Transform(name, lambda g: np.repeat(np.repeat(g, factor_y, 0), factor_x, 1),
                   lambda g: g[::factor_y, ::factor_x])


def repeat(axis: int, times: int = 2) -> Transform:
  """The grid tiled `times` times along rows (0), columns (1) or both (2)."""
  _check_axis(axis, (0, 1, 2))
  reps = {0: (times, 1), 1: (1, times), 2: (times, times)}[axis]
  return Transform(f"repeat{axis}", lambda g: np.tile(g, reps),
                   lambda g: g[:g.shape[0] // reps[0], :g.shape[1] // reps[1]])


def chain(*transforms: Transform) -> Transform:
  """The transforms applied in order; the inverse undoes them in reverse order."""

  def forward(g):
    for t in transforms:
      g = t.forward(g)
    return g

  def backward(g):
    for t in reversed(transforms):
      g = t.backward(g)
    return g

  return Transform("+".join(t.name for t in transforms), forward, backward)


def _check_axis(axis: int, allowed: tuple[int, ...]):
  if axis not in allowed:
    raise ValueError(f"axis={axis!r}; expected one of {allowed}")


def ttt_transforms(rng: np.random.Generator, max_shift: int = 4) -> list[Transform]:
  """The paper's training-data transforms (Table 5), with a random translation (1 to max_shift
  cells on each axis) drawn from `rng`."""
  basic = [rotate(90), rotate(270), rotate(180), flip(0), flip(1), TRANSPOSE]
  dy, dx = (int(v) for v in rng.integers(1, max_shift + 1, size=2))
  return (basic[:5] + [reflect(a, r) for a in (0, 1) for r in (False, True)]
          + [translate(dy, dx), TRANSPOSE, upscale(2, 2), upscale(2, 1), upscale(1, 2)]
          + [chain(t, upscale(2, 2)) for t in basic] + [repeat(a) for a in (0, 1, 2)])


# Inference: the identity and the paper's five invertible transforms (section 5.5).
INFERENCE_TRANSFORMS = (IDENTITY, TRANSPOSE, flip(0), flip(1), rotate(90), rotate(180))


def transform_episode(episode: Episode, fn: Callable[[np.ndarray], np.ndarray]) -> Episode:
  """`fn` applied to every grid of the episode."""
  pair = lambda e: Example(fn(e.input), fn(e.output))
  return Episode(tuple(pair(e) for e in episode.demos), pair(episode.query))


def fits(episode: Episode, max_side: int = MAX_SIDE) -> bool:
  return all(max(g.shape) <= max_side for e in list(episode.demos) + [episode.query] for g in e)


def colour_permutation(rng: np.random.Generator) -> np.ndarray:
  """A lookup table of the 10 colours: 0 (the background) stays 0, colours 1-9 are permuted."""
  return np.concatenate([[0], 1 + rng.permutation(9)]).astype(np.int8)


def permute_colours(grid: np.ndarray, table: np.ndarray) -> np.ndarray:
  return np.asarray(table, np.int8)[np.asarray(grid)]


def invert_permutation(table: np.ndarray) -> np.ndarray:
  return np.argsort(table).astype(np.int8)


def shuffle_demos(episode: Episode, rng: np.random.Generator) -> Episode:
  order = rng.permutation(len(episode.demos))
  return Episode(tuple(episode.demos[i] for i in order), episode.query)


def by_name(names: Sequence[str]) -> list[Transform]:
  """The inference transforms named (a ValueError lists the known names)."""
  known = {t.name: t for t in INFERENCE_TRANSFORMS}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"transforms {unknown}: unknown; expected names among {sorted(known)}")
  return [known[n] for n in names]
