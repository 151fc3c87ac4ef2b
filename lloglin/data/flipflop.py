"""Flip-flop language modelling (Liu et al. 2023, "Exposing Attention Glitches with Flip-Flop
Language Modeling"; the PaTH paper's state-tracking toy; docs/literature.md#synthetic-tasks).

A flip-flop string is seq_len / 2 instruction-bit pairs: "w b" writes bit b to a one-bit memory,
"i b" is ignored, "r b" reads the memory, so b must equal the bit of the latest "w". FFL(p):
the first instruction is "w", the last is "r", every other one is "i" with probability p and
"w" or "r" with probability (1 - p) / 2 each; every written or ignored bit is a fair coin.
The papers train on FFL(0.8) and test on FFL(0.8) (in distribution), FFL(0.98) (sparse:
long gaps between a write and its read) and FFL(0.1) (dense).

Tokens: W = 0, R = 1, I = 2, bit 0 = 3, bit 1 = 4, BOS = 5 (vocab_size 6). A row is
BOS + the seq_len / 2 pairs, shifted: inputs = row[:-1], targets = row[1:]. The loss mask is 1
only where the input is R (the target is the read bit, the only deterministic token), so
eval_accuracy is 1 - the read error rate. (Liu et al. train on every token; the random bits
carry no signal, so masking them only removes noise from the loss.) One document per row:
segment_ids 1, positions 0..seq_len-1.

Example i of a split is a pure function of (seed, split, i); the validation split draws from
FFL(val_p_ignore), so one config evaluates any of the three test distributions.
"""

import numpy as np

W, R, I, BIT0, BIT1, BOS = range(6)
VOCAB_SIZE = 6
_STREAM = 0x4646  # keeps these seeds apart from the shuffling and MQAR seeds
_SPLIT_CODES = {"train": 0, "validation": 1}


class FlipFlopExamples:
  """Random access to the flip-flop strings of one split; an item is one string."""

  def __init__(self, flipflop_cfg, *, split: str, seq_len: int, seed: int):
    p = flipflop_cfg.p_ignore if split == "train" else flipflop_cfg.val_p_ignore
    name = "p_ignore" if split == "train" else "val_p_ignore"
    if not 0 <= p < 1:
      raise ValueError(f"data.flipflop.{name}={p} must be in [0, 1)")
    if seq_len < 4 or seq_len % 2:
      raise ValueError(f"seq_len={seq_len}: flip-flop rows hold instruction-bit pairs after a "
                       f"BOS token, so seq_len must be even and >= 4")
    self._p_ignore, self._pairs = p, seq_len // 2
    self._seed, self._split_code = seed, _SPLIT_CODES[split]
    self.num_items = (flipflop_cfg.num_train_examples if split == "train"
                      else flipflop_cfg.num_val_examples)
    self.what = f"flip-flop {split} strings"

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    tokens = np.stack([self.string(int(i)) for i in indices])
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    shape = inputs.shape
    return {
        "inputs": inputs,
        "targets": targets,
        "loss_mask": (inputs == R).astype(np.float32),
        "segment_ids": np.ones(shape, np.int32),
        "positions": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy(),
    }

  def string(self, index: int) -> np.ndarray:
    """BOS and the instruction-bit pairs of string `index`, [seq_len + 1] int32."""
    rng = np.random.default_rng([_STREAM, self._seed, self._split_code, index])
    n, p = self._pairs, self._p_ignore
    ops = rng.choice([W, R, I], size=n, p=[(1 - p) / 2, (1 - p) / 2, p])
    ops[0], ops[-1] = W, R
    bits = rng.integers(2, size=n)
    written = np.where(ops == W, np.arange(n), 0)
    last_write = np.maximum.accumulate(written)  # index of the latest W at or before each pair
    bits = np.where(ops == R, bits[last_write], bits)
    out = np.empty(2 * n + 1, np.int32)
    out[0] = BOS
    out[1::2] = ops
    out[2::2] = BIT0 + bits
    return out
