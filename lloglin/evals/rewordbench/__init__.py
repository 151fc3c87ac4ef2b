"""The `rewordbench` suite (settings: configs/rewordbench.py): reward models under meaning- and
ranking-preserving rewrites of their inputs, after reWordBench (arXiv 2503.11751).

transforms.py: the transformation registry; paraphrase.py: the model-based transforms; data.py:
RewardBench-format records; scoring.py: scorers; metrics.py: accuracy, drop and flip rate;
suite.py: the run; plots.py: its figures. Method and settings: docs/suites/rewordbench.md.
"""

from lloglin.evals.rewordbench.suite import run  # noqa: F401  (registers the suite)
