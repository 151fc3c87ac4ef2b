"""lloglin: efficient sequence models in JAX/Flax NNX.

Sub-packages (imports point one way: ops <- layers <- models <- training / evals / inference):
  ops        pure array functions, one module per mixer: oracles, chunked training forms, decode
             steps (no Flax); pallas_kernels/ (beside this package) accelerates them on GPU
  layers     NNX modules around the ops; sequence mixers registered by name, decode caches
  models     assembled models: the decoder LM with a mixer per layer and a residual mode
  data       tokenizers, tfds and local text, packing, synthetic tasks (MQAR, flip-flop)
  training   train state, step, loop, orbax checkpoints, metrics, export, model loading
  evals      LM metrics, and the room for evaluation suites: one sub-package per suite,
             registered by name and run by `eval.py --suite NAME`
  inference  generation over decode caches (prefill + decode loop), sampling, fused decode
  optim      linear gradient transforms (GaLore, random sketches, Kronecker) as optax
             transforms, and their dual adapters
  parallel   multi-host start-up, meshes, sharding rules, tensor parallelism, Ladder Residual

What the code computes and how it is tested: docs/ (docs/README.md).
"""

__version__ = "0.1.0"
