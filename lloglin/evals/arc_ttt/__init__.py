"""The `arc_ttt` suite: test-time training on ARC (arXiv 2411.07279), docs/suites/arc_ttt.md.

The task data model and loaders (lloglin.data.arc_grids), the text codec of episodes
(lloglin.data.arc_codec) and the generator of DSL tasks with its pre-training source
(lloglin.data.arc_dsl) live in lloglin.data, since pre-training reads them too; here:

  augment    grid transforms with inverses, colour permutations, demo shuffles
  ttt_data   leave-one-out (and leave-two-out) training episodes of a task
  ttt        LoRA adapters trained per task (vmapped over tasks), resumable
  inference  augmented inference on the decode caches
  voting     hierarchical, flat and oracle votes
  probe      in-context skill of the pre-trained LM on single primitives and pairs
  suite      the suite: ablations, pass@2, report and figure
"""

from lloglin.evals.arc_ttt.suite import run  # noqa: F401  (registers the suite)
