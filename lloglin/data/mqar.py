"""Multi-query associative recall (MQAR), as defined by Zoology (Arora, Eyuboglu et al. 2023,
`zoology/data/associative_recall.py`, `multiquery_ar`).

A row of seq_len tokens, with n = num_kv_pairs and V = vocab_size:
- the context, tokens [0, 2n): n distinct keys from [1, V // 2), each followed by its value, n
  distinct values from [V // 2, V);
- the queries: each key once more, at position 2n + 2 * gap, the n gaps drawn without replacement
  from [0, (seq_len - 2n) // 2) with probability proportional to (gap + 1) ** (power_a - 1)
  (power_a = 1 is uniform; small power_a puts queries near the context);
- every other position is 0, or a uniform random token from [0, V) when random_non_queries.
At a query position the target is the queried key's value and loss_mask is 1; elsewhere the
target is 0 and loss_mask 0 (Zoology's -100 labels). A row is one document: segment_ids 1,
positions 0..seq_len-1.

Example i of a split is a pure function of (seed, split, i), so any example can be regenerated on
its own; train and validation draw from different streams.
"""

import numpy as np

_STREAM = 0x4D51  # keeps these seeds apart from the shuffling seeds in dataset.py
_SPLIT_CODES = {"train": 0, "validation": 1}


class MqarExamples:
  """Random access to the MQAR examples of one split; an item is one example."""

  def __init__(self, mqar_cfg, *, split: str, seq_len: int, seed: int):
    n, vocab = mqar_cfg.num_kv_pairs, mqar_cfg.vocab_size
    if n < 1:
      raise ValueError(f"data.mqar.num_kv_pairs={n} must be at least 1")
    if seq_len < 4 * n:
      raise ValueError(f"seq_len={seq_len} is too small for MQAR with num_kv_pairs={n}: the "
                       f"context takes 2 * num_kv_pairs tokens and the queries need as many "
                       f"again, so seq_len must be >= 4 * num_kv_pairs = {4 * n}")
    if vocab // 2 - 1 < n:
      raise ValueError(f"data.mqar.vocab_size={vocab} is too small for num_kv_pairs={n}: keys "
                       f"come from [1, vocab_size // 2), so vocab_size must be >= {2 * n + 2}")
    if not mqar_cfg.power_a > 0:
      raise ValueError(f"data.mqar.power_a={mqar_cfg.power_a} must be > 0")
    self._n, self._vocab, self._seq_len = n, vocab, seq_len
    self._random_fill = mqar_cfg.random_non_queries
    self._seed, self._split_code = seed, _SPLIT_CODES[split]
    num_gaps = (seq_len - 2 * n) // 2
    self._log_gap_p = (mqar_cfg.power_a - 1.0) * np.log(np.arange(1, num_gaps + 1))
    self.num_items = (mqar_cfg.num_train_examples if split == "train"
                      else mqar_cfg.num_val_examples)
    self.what = f"MQAR {split} examples"

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    inputs, targets, loss_mask = map(np.stack, zip(*(self.example(int(i)) for i in indices)))
    shape = inputs.shape
    return {
        "inputs": inputs,
        "targets": targets,
        "loss_mask": loss_mask,
        "segment_ids": np.ones(shape, np.int32),
        "positions": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy(),
    }

  def example(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, targets and loss mask of example `index`, each [seq_len]."""
    rng = np.random.default_rng([_STREAM, self._seed, self._split_code, index])
    n, vocab, seq_len = self._n, self._vocab, self._seq_len
    keys = 1 + rng.choice(vocab // 2 - 1, n, replace=False)
    values = vocab // 2 + rng.choice(vocab - vocab // 2, n, replace=False)
    # n gaps without replacement, weighted by the power law: the Gumbel top-n trick draws the
    # same distribution as Zoology's np.random.choice(replace=False, p=p), in one vectorised pass.
    gaps = np.argsort(rng.gumbel(size=len(self._log_gap_p)) + self._log_gap_p)[-n:]
    query_pos = 2 * n + 2 * gaps

    inputs = np.zeros(seq_len, np.int32)
    inputs[0:2 * n:2] = keys
    inputs[1:2 * n:2] = values
    inputs[query_pos] = keys
    if self._random_fill:
      fill = inputs == 0
      inputs[fill] = rng.integers(vocab, size=int(fill.sum()))
    targets = np.zeros(seq_len, np.int32)
    targets[query_pos] = values
    loss_mask = np.zeros(seq_len, np.float32)
    loss_mask[query_pos] = 1.0
    return inputs, targets, loss_mask
