"""lloglin: efficient sequence models in JAX/Flax NNX.

Sub-packages (arrows point one way: ops <- layers <- models <- training/evals):
  ops        pure array functions, one module per mixer (no Flax)
  layers     NNX modules around the ops; mixers are chosen by name
  models     assembled models (decoder LM)
  data       tokenizers, text sources, packing, synthetic tasks
  training   train state, step, loop, checkpointing, metrics, export
  evals      evaluation metrics and suites
"""

__version__ = "0.1.0"
