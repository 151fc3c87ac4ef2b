"""Timing helpers shared by the benchmarks: a timed loop of device calls, a synthetic LM batch
and a timed loop of train steps."""

import time

import jax
import jax.numpy as jnp
import numpy as np


def median_seconds(call, *, calls: int = 10, repeats: int = 3) -> float:
  """Median over `repeats` of the seconds per call of `calls` back-to-back calls, after one
  warm-up call. Only the last output is kept (calls run in order on the device): holding all of
  them would take `calls` times the output's memory."""
  jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = call()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls)
  return float(np.median(times))


def synthetic_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict:
  """Random tokens in the trainer's batch layout (one document per row, every target counted)."""
  tokens = jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, seq + 1)), jnp.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_ids": jnp.ones((batch, seq), jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)),
          "loss_mask": jnp.ones((batch, seq), jnp.float32)}


def synthetic_batches(vocab: int, batch: int, seq: int, count: int) -> list[dict]:
  """`count` distinct synthetic batches (seeds 0 .. count - 1), made before any step is timed."""
  return [synthetic_batch(vocab, batch, seq, seed) for seed in range(count)]


def time_train_steps(program, batches: list[dict]):
  """(state, per-step seconds, last metrics): batches[0] compiles (one untimed step), each later
  batch is one timed step. Distinct batches keep the loss a sanity check: on uniform random
  tokens no causal model gets below ln(vocab) in expectation, so a loss well below it means the
  model reads its targets; one batch repeated would be memorised instead."""
  state, metrics = program.train_step(program.state, batches[0])
  jax.block_until_ready(metrics)
  times = []
  for data in batches[1:]:
    t0 = time.perf_counter()
    state, metrics = program.train_step(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return state, times, metrics
