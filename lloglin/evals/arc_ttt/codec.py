"""Text codec of ARC episodes for a byte-level LM, with exact round trips and checked decoding.

A grid is its rows of digits, one line each ("012\\n340"). An episode is written as
    <BOS> x_1 "\\n=\\n" y_1 "\\n#\\n" ... x_K "\\n=\\n" y_K "\\n#\\n" x_q "\\n=\\n" y_q "\\n#"
so that the model, prompted up to the query's "=" line, writes the output rows and then "#"
(the stop token). arXiv 2411.07279 writes grids as numpy prints or python lists with " -> " and
"#"; the digits-per-row form here is shorter (a 30 x 30 grid is 929 bytes) and carries the same
information. Tokens are lloglin's ByteTokenizer ids (bytes, BOS 256).

The loss mask of an episode marks its output spans (the rows and the "\\n#" after them): the
query output always, and with `demo_loss` the demonstration outputs from the second one on (the
first cannot be inferred from anything before it), the paper's "all outputs" loss.
"""

import numpy as np

from lloglin.data.tokenizers import ByteTokenizer
from lloglin.evals.arc_ttt.grids import Episode, Example, as_grid

TOKENIZER = ByteTokenizer()
ARROW = "\n=\n"  # between an input grid and its output grid
END = "\n#"  # after an output grid; "#" stops generation
STOP_TOKEN = ord("#")
SEPARATOR = "\n"  # after END, before the next pair


def grid_text(grid: np.ndarray) -> str:
  return "\n".join("".join(str(int(c)) for c in row) for row in np.asarray(grid))


def parse_grid(text: str, where: str = "decoded grid") -> np.ndarray:
  """The grid `text` spells (rows of digits, one per line); a ValueError naming `where` if it is
  not one (ragged rows, other characters, empty, over 30 x 30)."""
  lines = text.split("\n")
  bad = [ch for line in lines for ch in line if not "0" <= ch <= "9"]
  if bad:
    raise ValueError(f"{where}: character {bad[0]!r} in {text[:40]!r}; expected rows of digits")
  return as_grid([[int(ch) for ch in line] for line in lines], where)


def decode_output(tokens, where: str = "decoded grid") -> np.ndarray | None:
  """The output grid in generated tokens (up to the stop token), or None when they do not spell a
  valid grid (no stop token, ragged rows, other characters...)."""
  text = TOKENIZER.decode(tokens)
  if "#" not in text:
    return None
  body = text[:text.index("#")]
  if not body.endswith("\n"):
    return None
  try:
    return parse_grid(body[:-1], where)
  except ValueError:
    return None


def prompt_text(demos, query_input: np.ndarray) -> str:
  return "".join(pair_text(e) for e in demos) + grid_text(query_input) + ARROW


def pair_text(example: Example) -> str:
  return grid_text(example.input) + ARROW + grid_text(example.output) + END + SEPARATOR


def prompt_tokens(demos, query_input: np.ndarray) -> list[int]:
  """BOS and the text up to the query's "=" line: what generation continues."""
  return [TOKENIZER.bos_id] + TOKENIZER.encode(prompt_text(demos, query_input))


def episode_tokens(episode: Episode, *, demo_loss: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [T], loss mask float32 [T]) of a whole episode; mask[t] = 1 where token t is
  an output token to predict (see the module docstring). Next-token training shifts them."""
  tokens, mask = [TOKENIZER.bos_id], [0.0]

  def add(text: str, scored: bool):
    ids = TOKENIZER.encode(text)
    tokens.extend(ids)
    mask.extend([float(scored)] * len(ids))

  pairs = list(episode.demos) + [episode.query]
  for k, example in enumerate(pairs):
    is_query = k == len(pairs) - 1
    add(grid_text(example.input) + ARROW, False)
    add(grid_text(example.output) + END, is_query or (demo_loss and k >= 1))
    if not is_query:
      add(SEPARATOR, False)
  return np.asarray(tokens, np.int32), np.asarray(mask, np.float32)


def episode_length(episode: Episode) -> int:
  """Tokens of `episode_tokens(episode)`, without building them."""
  grids = [g for e in list(episode.demos) + [episode.query] for g in e]
  cells = sum(g.shape[0] * (g.shape[1] + 1) - 1 for g in grids)
  pairs = len(episode.demos) + 1
  return 1 + cells + pairs * (len(ARROW) + len(END)) + (pairs - 1) * len(SEPARATOR)
