"""Test-time training: LoRA adapters on a frozen LM, one per task, several tasks per jitted step.

`train_adapters(lm, episodes_per_task, cfg)` trains one adapter per entry of `episodes_per_task`
(each a list of Episodes, e.g. `ttt_data.ttt_episodes`; a shared adapter is one entry holding
every task's episodes). All adapters of a call are stacked and trained in one program, vmapped
over the adapter axis; the base parameters enter once, unbatched. Adapter i takes
ceil(epochs * n_i / batch_size) AdamW steps with its own warmup + cosine schedule; the program
runs the longest count and freezes each adapter once its own steps are done, so the result is
the one separate runs would give.

Batches are a pure function of (seed, adapter index, step), so a run restored from a checkpoint
(`checkpoint_dir`, every `checkpoint_every` steps) continues exactly as the uninterrupted one.
Loss: mean cross-entropy over the episode's loss-mask tokens (codec.episode_tokens: the query
output and, with demo_loss, the demonstration outputs from the second on).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lloglin import optim
from lloglin.data import arc_codec as codec
from lloglin.data.arc_grids import Episode
from lloglin.training.checkpoint import Checkpointer
from lloglin.training.losses import masked_cross_entropy

_BUCKET = 32  # batch lengths are rounded up to a multiple of this or of an eighth of their
# power of two (ARC episodes of up to 2048 tokens: 32 compiled lengths, not 64)


class FrozenLM(NamedTuple):
  """A DecoderLM split for adapter training: graphdef, frozen params, other state."""
  graphdef: Any
  params: Any
  rest: Any
  max_seq_len: int

  @classmethod
  def of(cls, model: nnx.Module) -> "FrozenLM":
    return cls(*nnx.split(model, nnx.Param, ...), model.cfg.max_seq_len)

  def model(self, adapters: Any = None) -> nnx.Module:
    """The LM with `adapters` (one adapter tree, not stacked) merged in, or the base."""
    params = self.params if adapters is None else optim.apply_adapters(self.params, adapters)
    return nnx.merge(self.graphdef, params, self.rest)


def steps_for(num_episodes: int, cfg) -> int:
  return max(1, math.ceil(cfg.epochs * num_episodes / cfg.batch_size))


def lr_at(step, total, cfg):
  """Linear warmup over min(warmup_steps, total - 1) steps, then cosine to 0 at `total`."""
  warmup = jnp.minimum(cfg.warmup_steps, total - 1)
  rise = (step + 1) / jnp.maximum(warmup, 1)
  progress = (step - warmup) / jnp.maximum(total - warmup, 1)
  fall = 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(progress, 0, 1)))
  return cfg.learning_rate * jnp.where(step < warmup, rise, fall)


def batch_indices(num_episodes: int, batch_size: int, step: int, seed: int, index: int):
  """The episodes of one step of adapter `index`: positions step * batch_size + j of an endless
  stream that visits every episode once per epoch, in an order drawn from (seed, index, epoch)."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, num_episodes)
  orders = {e: np.random.default_rng([seed, index, e]).permutation(num_episodes)
            for e in np.unique(epochs).tolist()}
  return np.array([orders[e][o] for e, o in zip(epochs.tolist(), offsets.tolist())], np.int64)


def make_batch(tokenized: list[list[tuple[np.ndarray, np.ndarray]]], step: int, cfg,
               max_len: int) -> dict[str, np.ndarray]:
  """[N adapters, batch, T] arrays of one step (T: the longest episode, rounded up)."""
  rows = [[tok[i] for i in batch_indices(len(tok), cfg.batch_size, step, cfg.seed, a)]
          for a, tok in enumerate(tokenized)]
  longest = max(len(t) for r in rows for t, _ in r)
  unit = max(_BUCKET, 1 << max(0, longest.bit_length() - 4))
  T = min(-(-longest // unit) * unit, max_len + 1)
  tokens = np.zeros((len(rows), cfg.batch_size, T), np.int32)
  masks = np.zeros((len(rows), cfg.batch_size, T), np.float32)
  for a, r in enumerate(rows):
    for b, (t, m) in enumerate(r):
      tokens[a, b, :len(t)], masks[a, b, :len(t)] = t, m
  real = (np.arange(T)[None, None] < np.array([[len(t) for t, _ in r] for r in rows])[..., None])
  positions = np.broadcast_to(np.arange(T - 1, dtype=np.int32), tokens[..., 1:].shape)
  return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": masks[..., 1:],
          "segment_ids": real[..., :-1].astype(np.int32), "positions": positions}


def episode_loss(graphdef, params, rest, adapters, batch):
  model = nnx.merge(graphdef, optim.apply_adapters(params, adapters), rest)
  logits = model(batch["inputs"], segment_ids_BT=batch["segment_ids"],
                 positions_BT=batch["positions"])
  loss_BT, _ = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
  return loss_BT.sum() / jnp.maximum(batch["loss_mask"].sum(), 1.0)


def _tx(cfg) -> optax.GradientTransformation:
  """AdamW with unit learning rate: the step scales its update by each adapter's own rate, which
  is AdamW at that rate (decoupled weight decay included)."""
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm),
                     optax.adamw(1.0, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay))


# (id of the graphdef, settings) -> (graphdef, jitted step): one compilation serves every call
# with the same model (graphdefs are not hashable; the entry keeps its graphdef alive).
_STEPS = {}


def make_step(graphdef, cfg):
  """The jitted step over stacked adapters: (params, rest, adapters, opt_state, batch, step,
  totals) -> (adapters, opt_state, losses [N]); params and rest are shared (not batched)."""
  key = (id(graphdef), tuple(sorted(vars(cfg).items())))
  if key in _STEPS and _STEPS[key][0] is graphdef:
    return _STEPS[key][1]
  tx = _tx(cfg)

  def one(params, rest, adapters, opt_state, batch, step, total):
    loss, grads = jax.value_and_grad(
        lambda a: episode_loss(graphdef, params, rest, a, batch))(adapters)
    updates, new_state = tx.update(grads, opt_state, adapters)
    lr = lr_at(step, total, cfg)
    new = optax.apply_updates(adapters, jax.tree.map(lambda u: lr * u, updates))
    active = step < total
    keep = lambda n, o: jax.tree.map(lambda x, y: jnp.where(active, x, y), n, o)
    return keep(new, adapters), keep(new_state, opt_state), loss

  step = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0, None, 0)), donate_argnums=(2, 3))
  _STEPS[key] = (graphdef, step)
  return step


def init_adapters(lm: FrozenLM, count: int, cfg, start: Any = None) -> tuple[Any, Any]:
  """`count` adapters (stacked) and their fresh optimizer states: copies of `start` (an adapter
  of the same specs), or fresh ones, each seeded by its index."""
  if start is None:
    specs = optim.lora_specs(lm.params, rank=cfg.rank, alpha=cfg.alpha, include=cfg.targets)
    adapters = optim.stack_adapters([optim.init_lora(lm.params, specs,
                                                     seed=cfg.seed * 100_003 + i)
                                     for i in range(count)])
  else:
    adapters = optim.stack_adapters([start] * count)
  return adapters, jax.vmap(_tx(cfg).init)(adapters)


def train_adapters(lm: FrozenLM, episodes_per_task: list[list[Episode]], cfg, *,
                   checkpoint_dir: str | None = None, checkpoint_every: int = 0,
                   stop_after: int | None = None, curve: list | None = None,
                   start: Any = None) -> tuple[Any, list[float]]:
  """(stacked adapters, the final loss of each) after test-time training (module docstring).

  cfg fields: rank, alpha, targets (regex of adapted parameter paths), learning_rate,
  warmup_steps, epochs, batch_size, weight_decay, grad_clip_norm, demo_loss, seed.
  `stop_after` ends the run after that many steps (to test resuming); `curve`, a list, receives
  each step's batch loss of every adapter (a list of floats per step). `start`: an adapter every
  entry starts from (None: fresh adapters, the base model). An entry without episodes keeps its
  starting adapter.
  """
  tokenized = [[codec.episode_tokens(e, demo_loss=cfg.demo_loss) for e in eps] or
               [(np.zeros(2, np.int32), np.zeros(2, np.float32))] for eps in episodes_per_task]
  totals = np.array([steps_for(len(eps), cfg) if eps else 0 for eps in episodes_per_task],
                    np.int32)
  adapters, opt_state = init_adapters(lm, len(episodes_per_task), cfg, start)
  state = {"step": jnp.zeros((), jnp.int32), "adapters": adapters, "opt_state": opt_state}
  ckpt = Checkpointer(checkpoint_dir, keep=1, async_save=False) if checkpoint_dir else None
  try:
    if ckpt is not None:
      restored = ckpt.restore_latest(state)
      if restored is not None:
        state = restored[1]
    step_fn = make_step(lm.graphdef, cfg)
    adapters, opt_state = state["adapters"], state["opt_state"]
    losses = np.zeros(len(episodes_per_task), np.float32)
    last = int(totals.max()) if stop_after is None else min(int(totals.max()), stop_after)
    for step in range(int(state["step"]), last):
      batch = make_batch(tokenized, step, cfg, lm.max_seq_len)
      adapters, opt_state, loss = step_fn(lm.params, lm.rest, adapters, opt_state, batch,
                                          jnp.int32(step), jnp.asarray(totals))
      losses = np.where(step < totals, np.asarray(loss), losses)
      if curve is not None:
        curve.append(np.asarray(loss).tolist())
      if ckpt is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
        ckpt.save(step + 1, {"step": jnp.int32(step + 1), "adapters": adapters,
                             "opt_state": opt_state}, data_state={}, config={})
  finally:
    if ckpt is not None:
      ckpt.close()
  return adapters, losses.tolist()
