"""Decode caches of the mixers, and the helpers their `prefill` / `step` methods share.

Every mixer has `init_cache(batch_size, max_len, dtype)`, `prefill(x_BTD, cache, lengths_B)` and
`step(x_BD, cache)`; its cache is a pytree (it jits, shards and checkpoints):

  attention                 KVCache: keys (RoPE-rotated) and values, [B, max_len, G, K]
  mamba2 / gdn              MixerCache: short-conv states + fixed float32 state_BHKV
  loglinear_mamba2 / _gdn   MixerCache: short-conv states + O(log T) ops.hierarchy.FenwickState
  path / path_fox           MixerCache: w short-conv state + ops.path.PathCache (keys transformed
                            to the current position, values, FoX gate cumsums)

`prefill` starts a new sequence: the cache it is given sets the capacity and dtypes, its contents
are replaced. Prompts are right-padded: row b holds `lengths_B[b]` real tokens (default all T),
and decoding continues each row at its own length.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lloglin.ops.attention import sanitize_padding
from lloglin.ops.hierarchy import capacity, fenwick_zeros


class KVCache(NamedTuple):
  """Softmax attention cache. Positions >= length_B are unused (zeros).

  k_BSGK: RoPE-rotated keys; v_BSGK: values; length_B: int32 tokens cached (next position).
  """
  k_BSGK: jax.Array
  v_BSGK: jax.Array
  length_B: jax.Array


class MixerCache(NamedTuple):
  """Cache of a mixer with short convolutions.

  conv_BWC: for each short conv of the mixer, its last W - 1 inputs [B, W - 1, C], oldest first.
  core: the mixer's own state: a float32 state_BHKV (Mamba-2, GDN), a FenwickState (log-linear
    variants) or a PathCache (PaTH, PaTH-FoX).
  """
  conv_BWC: tuple[jax.Array, ...]
  core: Any


def prompt_segment_ids(lengths_B, seq_len: int):
  """Segment ids of right-padded prompts (1 for the first lengths_B[b] tokens, 0 after); None
  when lengths_B is None (every row has seq_len real tokens)."""
  if lengths_B is None:
    return None
  return (jnp.arange(seq_len)[None, :] < jnp.asarray(lengths_B)[:, None]).astype(jnp.int32)


def cached_convs(states_BWC, lengths_B=None):
  """(conv, new_states) for a mixer's prefill or step: conv(i, module, x_BTC) runs ShortConv i
  continuing from states_BWC[i] and records its state after the first lengths_B tokens of each
  row (default all) in new_states[i]."""
  new_states = list(states_BWC)

  def conv(i, module, x_BTC):
    y_BTC, new_states[i] = module.extend(x_BTC, states_BWC[i], lengths_B)
    return y_BTC

  return conv, new_states


def full_sequence_convs(segment_ids_BT):
  """The conv(i, module, x_BTC) of a mixer's full-sequence call (packed documents restart)."""
  return lambda i, module, x_BTC: module(x_BTC, segment_ids_BT=segment_ids_BT)


def check_prefill(x_BTD, lengths_B, cache_len: int | None = None):
  """Static checks of a prefill: lengths_B has one entry a row and the prompt fits the cache
  (cache_len None: a fixed-size state that any length fits)."""
  B, T = x_BTD.shape[:2]
  if cache_len is not None and T > cache_len:
    raise ValueError(f"x_BTD: the prompt has T={T} tokens, more than the cache holds "
                     f"(max_len={cache_len})")
  if lengths_B is not None and jnp.shape(lengths_B) != (B,):
    raise ValueError(f"lengths_B: expected shape ({B},) (one length per row of x_BTD), got "
                     f"{jnp.shape(lengths_B)}")


def start_prefill(x_BTD, cache: MixerCache, lengths_B=None, cache_len: int | None = None):
  """The common start of a short-conv mixer's prefill: the checks, the prompts' segment ids,
  NaN-safe padding, and convs that start from zeros and record each row's final conv state.
  Returns (x_BTD, segment_ids_BT, conv, conv_BWC) (conv / conv_BWC as from cached_convs)."""
  check_prefill(x_BTD, lengths_B, cache_len)
  segment_ids_BT = prompt_segment_ids(lengths_B, x_BTD.shape[1])
  (x_BTD,) = sanitize_padding(segment_ids_BT, x_BTD)
  conv, conv_BWC = cached_convs([jnp.zeros_like(s) for s in cache.conv_BWC], lengths_B)
  return x_BTD, segment_ids_BT, conv, conv_BWC


def linear_state_zeros(batch_size: int, heads: int, k: int, v: int, *, levels: int | None,
                       max_len: int):
  """The float32 state of a linear mixer: [B, H, K, V], or (log-linear, `levels` not None) an
  empty Fenwick state of that many levels, which must serve max_len positions."""
  if levels is None:
    return jnp.zeros((batch_size, heads, k, v), jnp.float32)
  if max_len > capacity(levels):
    raise ValueError(f"max_len={max_len}: a log-linear cache of {levels} levels (from "
                     f"model.max_seq_len) serves at most {capacity(levels)} positions")
  return fenwick_zeros(batch_size, heads, levels, k, v)
