"""The `lm` suite (settings: configs/lm.py): the lm task's eval metrics on a trained LM, the
per-position loss plot, and generation."""

from lloglin.evals.lm.suite import run  # noqa: F401  (registers the suite)
