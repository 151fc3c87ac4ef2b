"""The `perception` suite: principle-guided pairwise judgements of visual complexity, aggregated
per image and compared with human ratings (after arXiv 2504.12511).

principles.py: the eight principles and the pairwise prompt; aggregate.py: Bradley-Terry with
ties, win rate, PLCC / SROCC per category, the disagreement report; synthetic.py: images with
controlled clutter, symmetry and proximity; judges.py: the judge interface, a noisy oracle,
computed-measure judges, the pair sampler; data.py: image folders with a scores CSV;
suite.py: the run. Method and readings of the
paper: docs/suites/perception.md.
"""

from lloglin.evals.perception.suite import run  # noqa: F401  (registers the suite)
