"""The `semantic_hub` suite (settings: configs/semantic_hub.py; docs/suites/semantic_hub.md): the
Semantic Hub Hypothesis (arXiv 2411.04986) for every lloglin mixer, by layer-wise similarity of
paired inputs, the logit lens and steering, on the synthetic multilingual world
(lloglin.data.multilingual) or a user's paired texts."""

from lloglin.evals.semantic_hub.suite import run  # noqa: F401  (registers the suite)
