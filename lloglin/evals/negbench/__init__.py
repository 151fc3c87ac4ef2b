"""The `negbench` suite (settings: configs/negbench.py): negation understanding of dual encoders,
after NegBench (arXiv 2501.09425).

The Retrieval-Neg captions, MCQ-Neg questions and NegCap / NegMCQ training records built from
object annotations are data (lloglin.data.negbench); here, data.py: the released CSV layout;
metrics.py: Recall@k and MCQ accuracy per question type; suite.py: the run; plots.py: its
figures. Method and settings: docs/suites/negbench.md.
"""

from lloglin.evals.negbench.suite import run  # noqa: F401  (registers the suite)
