"""lloglin: efficient sequence models in JAX/Flax NNX.

Sub-packages, in floors (a module imports from its own floor and those below; tests/test_layering.py
enforces it): ops <- parallel (and pallas_kernels/, beside this package) <- layers <- models <-
data, optim, training, evals, inference.
  ops        pure array functions, one module per mixer: oracles, chunked training forms, decode
             steps (no Flax); pallas_kernels/ accelerates them on GPU with the same signatures
  parallel   multi-host start-up, meshes, sharding rules, tensor parallelism (shard_map + psum)
  layers     NNX modules around the ops; sequence mixers registered by name, decode caches
  models     assembled models: the decoder LM with a mixer per layer and a residual mode
             (standard, Ladder Residual, parallel, desync), and the reward model
  data       tokenizers, tfds and local text, packing, synthetic tasks (MQAR, flip-flop),
             preference pairs
  optim      linear gradient transforms (GaLore, random sketches, Kronecker) as optax
             transforms, and their dual adapters
  training   train state, step, loop, orbax checkpoints, metrics, export, model loading; tasks/
             holds the training objectives by name (`c.task`: lm, reward; register_task)
  evals      the evaluation suites, one sub-package each (lm/), registered by name
             (register_suite) and run by `eval.py --suite NAME`, writing report.json and plots
  inference  generation over decode caches (prefill + decode loop), sampling, the fused
             whole-model decode, tensor-parallel decoding

What the code computes and how it is tested: docs/ (docs/README.md); how to add a mixer, kernel,
suite or task: CONTRIBUTING.md.
"""

__version__ = "0.1.0"
