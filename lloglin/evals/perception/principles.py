"""The principles of visual complexity a judge compares two images on (arXiv 2504.12511): the six
Gestalt laws, visual clutter and visual symmetry.

Each principle has a definition (the background the paper's long prompt gives the judge) and a
question whose answer "A" or "B" names the image that shows *more* of the principle: a higher
Bradley-Terry score means more clutter, more symmetry, a simpler image, and so on. The paper's
exact prompt is not public (its full text was not retrieved); the wording here is this suite's.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Principle:
  """name: the key in configs and reports; question: asks which image shows more of it."""
  name: str
  title: str
  definition: str
  question: str


PRINCIPLES: dict[str, Principle] = {p.name: p for p in (
    Principle("similarity", "Law of similarity",
              "Elements that look alike (in colour, shape, size or texture) are perceived as "
              "belonging together, forming groups.",
              "In which image do visually similar elements form clearer groups?"),
    Principle("proximity", "Law of proximity",
              "Elements that are close to each other are perceived as a group, apart from "
              "elements farther away.",
              "In which image are the elements grouped more strongly by their closeness?"),
    Principle("simplicity", "Law of simplicity (Pragnanz)",
              "The visual system reads a scene in the simplest, most regular form available; "
              "an image is simpler when it can be described by fewer, more regular parts.",
              "Which image is simpler, i.e. can be described by fewer and more regular parts?"),
    Principle("closure", "Law of closure",
              "Incomplete shapes are perceived as whole: the mind fills the gaps of contours "
              "that are almost closed.",
              "In which image do incomplete contours more strongly suggest whole shapes?"),
    Principle("continuity", "Law of continuity",
              "Elements arranged on a line or smooth curve are perceived as related and the eye "
              "follows the smoothest path.",
              "In which image do elements follow smoother continuous lines or curves?"),
    Principle("figure_ground", "Figure-ground",
              "A scene is separated into figures (objects in focus) and the ground behind them; "
              "the separation can be clear or ambiguous.",
              "In which image are the figures more clearly separated from the background?"),
    Principle("clutter", "Visual clutter",
              "The state in which excess items, or their disorganisation, degrade performance "
              "on a task: many objects, edges and colours competing for attention.",
              "Which image is more visually cluttered?"),
    Principle("symmetry", "Visual symmetry",
              "An image is symmetric when a part of it mirrors another, most often about a "
              "vertical axis.",
              "Which image is more symmetric?"),
)}

_PROMPT = """You are an HCI researcher who studies the visual complexity of images.

Principle: {title}. {definition}

You are shown two images, image A (first) and image B (second). Compare them on this principle \
only. {question} Answer "tie" only if they cannot be told apart on it.

Reply with a JSON object and nothing else:
{{"justification": "<two or three sentences on what you see in each image>", \
"winner": "A" | "B" | "tie"}}"""


def principle(name: str) -> Principle:
  """The principle `name`; unknown names -> ValueError listing the known ones."""
  if name not in PRINCIPLES:
    raise ValueError(f"principle: unknown principle {name!r}; known: {', '.join(PRINCIPLES)}")
  return PRINCIPLES[name]


def pairwise_prompt(name: str) -> str:
  """The text asking a judge to compare image A and image B on principle `name` and justify."""
  p = principle(name)
  return _PROMPT.format(title=p.title, definition=p.definition, question=p.question)
