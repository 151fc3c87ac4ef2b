"""The `lm` suite (settings: configs/lm.py) and the LM metrics the training loop also reports."""

from lloglin.evals.lm.metrics import plot_per_position_loss  # noqa: F401
from lloglin.training.tasks.lm import evaluate  # noqa: F401
from lloglin.evals.lm.suite import run  # noqa: F401  (registers the suite)
