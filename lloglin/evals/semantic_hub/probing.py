"""Running a model over many short texts for the semantic-hub measures: pooled hidden states of
every layer, logit-lens readouts and steered continuations, in fixed-shape batches (one
compilation per model and kind of readout)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lloglin.evals.semantic_hub.analysis import logit_lens
from lloglin.inference.generate import generate
from lloglin.models.decoder import steer

POOLS = ("last", "mean")
_BUCKET = 16


def encode_rows(tokenizer, texts, max_len: int) -> list[list[int]]:
  """Each text's tokens after the tokenizer's BOS (where it has one), cut to max_len tokens."""
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  rows = [(bos + tokenizer.encode(t))[:max_len] for t in texts]
  empty = [i for i, r in enumerate(rows) if not r]
  if empty:
    raise ValueError(f"texts[{empty[0]}]={texts[empty[0]]!r} has no tokens")
  return rows


def _batches(rows, batch_size: int):
  """(start, tokens_BT, lengths_B) for consecutive slices of `rows`, right-padded to one bucketed
  length and, in the last batch, with copies of the first row (one shape for every batch)."""
  T = -(-max(len(r) for r in rows) // _BUCKET) * _BUCKET
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    chunk = chunk + [rows[0]] * (batch_size - len(chunk))
    tokens_BT = np.zeros((batch_size, T), np.int32)
    for b, r in enumerate(chunk):
      tokens_BT[b, :len(r)] = r
    yield start, jnp.asarray(tokens_BT), jnp.asarray([len(r) for r in chunk], jnp.int32)


@jax.jit
def _streams(model, tokens_BT):
  return model.probe(tokens_BT)["resid"]


def streams(model, rows, batch_size: int):
  """(first row index, the residual stream of every layer [L + 1, n, T, D] at every position,
  lengths [n]) for consecutive batches of the rows (n rows each, the last batch's fewer); the
  model runs in one compiled shape, and every readout below works from these arrays."""
  for start, tokens_BT, lengths_B in _batches(rows, batch_size):
    n = min(batch_size, len(rows) - start)
    yield start, np.asarray(_streams(model, tokens_BT))[:, :n], np.asarray(lengths_B)[:n]


def _token_weights(lengths_B, T: int, skip_first: bool) -> np.ndarray:
  """[B, T] weights averaging each row's tokens (after the first when skip_first, unless that is
  its only token)."""
  t_T = np.arange(T)
  first_B = np.minimum(int(skip_first), lengths_B - 1)
  keep_BT = (t_T >= first_B[:, None]) & (t_T < lengths_B[:, None])
  return keep_BT / keep_BT.sum(-1, keepdims=True)


def pooled_states(model, rows, *, pool: str, skip_first: bool, batch_size: int) -> np.ndarray:
  """The residual stream of every layer [L + 1, N, D] for each row: at its last token, or
  averaged over its tokens (after the first when `skip_first`: a BOS every row shares)."""
  if pool not in POOLS:
    raise ValueError(f"pool={pool!r}; expected one of {POOLS}")
  out = []
  for _, h_LBTD, lengths_B in streams(model, rows, batch_size):
    if pool == "last":
      out.append(h_LBTD[:, np.arange(len(lengths_B)), lengths_B - 1])
    else:
      out.append(np.einsum("lbtd,bt->lbd", h_LBTD,
                           _token_weights(lengths_B, h_LBTD.shape[2], skip_first)))
  return np.concatenate(out, axis=1)


def stream_norms(model, rows, *, skip_first: bool, batch_size: int) -> np.ndarray:
  """The norm of the residual stream per layer [L + 1], averaged over each row's tokens (after
  the first when `skip_first`), then over the rows."""
  out = [np.einsum("lbt,bt->lb", np.linalg.norm(h_LBTD, axis=-1),
                   _token_weights(lengths_B, h_LBTD.shape[2], skip_first))
         for _, h_LBTD, lengths_B in streams(model, rows, batch_size)]
  return np.concatenate(out, axis=1).mean(axis=1)


@partial(jax.jit, static_argnames=("final_norm",))
def _lens(model, h_LBTD, targets_BTJ, types_KV, final_norm):
  """Per layer: the logit lens's mass on each token type [L + 1, B, T, K] and its
  log-probabilities of the target tokens [L + 1, B, T, J] (one layer's logits at a time)."""
  def layer(h_BTD):
    logp_BTV = logit_lens(model, h_BTD, final_norm=final_norm)
    shares_BTK = jnp.einsum("btv,kv->btk", jnp.exp(logp_BTV), types_KV)
    return shares_BTK, jnp.take_along_axis(logp_BTV, jnp.maximum(targets_BTJ, 0), axis=-1)
  return jax.lax.map(layer, h_LBTD)


def lens_readout(model, rows, targets, types_KV, *, final_norms=(True, False),
                 batch_size: int) -> dict:
  """The logit lens at every position of each row that predicts a next token, for each of
  `final_norms`: {final_norm: (type shares [L + 1, M, K], log-probabilities [L + 1, M, J] of
  targets[n][t] (J token ids per position, -1 for none: NaN))} over the M such positions of all
  rows, in row order. targets[n] has one entry per position of rows[n] but its last."""
  out = {f: ([], []) for f in final_norms}
  J = len(targets[0][0])
  for start, h_LBTD, lengths_B in streams(model, rows, batch_size):
    B, T = len(lengths_B), h_LBTD.shape[2]
    targets_BTJ = np.full((batch_size, T, J), -1, np.int32)
    for b in range(B):
      targets_BTJ[b, :len(targets[start + b])] = targets[start + b]
    h_LBTD = np.pad(h_LBTD, [(0, 0), (0, batch_size - B), (0, 0), (0, 0)])  # one shape
    for final_norm, (shares, logps) in out.items():
      s_LBTK, lp_LBTJ = (np.asarray(x) for x in _lens(model, h_LBTD, targets_BTJ, types_KV,
                                                        final_norm))
      for b in range(B):
        m = lengths_B[b] - 1
        shares.append(s_LBTK[:, b, :m])
        logps.append(np.where(targets_BTJ[b, :m] >= 0, lp_LBTJ[:, b, :m], np.nan))
  return {f: (np.concatenate(s, axis=1), np.concatenate(lp, axis=1)) for f, (s, lp) in out.items()}


def steered_continuations(model, prompts, vector_D, *, layer: int, strength: float,
                          new_tokens: int, prompt_only: bool, temperature: float, seed: int,
                          stop_tokens=()) -> list[list[int]]:
  """Continuations of the prompts with strength * vector_D added to the stream entering block
  `layer`, at every position or (prompt_only) at the prompts' own; the same seed draws the same
  random numbers at every strength, so differences come from the steering."""
  stop = [len(p) for p in prompts] if prompt_only else None
  steering = steer(vector_D, layer=layer, strength=strength, stop=stop)
  return generate(model, prompts, new_tokens, temperature=temperature, seed=seed,
                  stop_tokens=stop_tokens, steering=steering, impl="plain")
