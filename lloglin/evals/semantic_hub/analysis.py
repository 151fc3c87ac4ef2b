"""The measures of the semantic-hub analysis (arXiv 2411.04986), on hidden states and a model's
head: Eq. 1 (baseline-adjusted cosine similarity), Eq. 2 (the logit lens) and steering vectors.
docs/suites/semantic_hub.md says what each measures and which reading of the paper it takes."""

import jax
import jax.numpy as jnp
import numpy as np


def baseline_adjusted_similarity(a_LND, b_LND) -> dict[str, np.ndarray]:
  """Eq. 1 at every layer, for N pairs (a_i, b_i) that mean the same: the mean cosine of the
  pairs ("paired", the diagonal of the N x N cosine matrix), the mean cosine of the mismatched
  (a_i, b_j), i != j ("shuffled", its off-diagonal), and their difference ("adjusted"); each [L].
  """
  a_LND, b_LND = np.asarray(a_LND, np.float64), np.asarray(b_LND, np.float64)
  if a_LND.shape != b_LND.shape or a_LND.ndim != 3 or a_LND.shape[1] < 2:
    raise ValueError(f"a_LND, b_LND: expected two [layers, N >= 2 pairs, D] arrays of one shape, "
                     f"got {a_LND.shape} and {b_LND.shape}")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)
  cos_LNN = np.einsum("lnd,lmd->lnm", unit(a_LND), unit(b_LND))
  N = cos_LNN.shape[-1]
  paired = np.trace(cos_LNN, axis1=1, axis2=2) / N
  shuffled = (cos_LNN.sum(axis=(1, 2)) - paired * N) / (N * (N - 1))
  return {"adjusted": paired - shuffled, "paired": paired, "shuffled": shuffled}


def logit_lens(model, h_LD, *, final_norm: bool):
  """Eq. 2: log-probabilities over the vocabulary [..., V] of hidden states h [..., D] read by the
  model's head, after its final norm if `final_norm` (the paper's code reads without it)."""
  if final_norm:
    h_LD = model.final_norm(h_LD)
  return jax.nn.log_softmax(model.logits(h_LD), axis=-1)


def unembedding_rows(model, ids) -> jax.Array:
  """The head's rows [len(ids), D] of token `ids` (the embedding rows when they are tied)."""
  ids = jnp.asarray(ids, jnp.int32)
  if model.head is None:
    return model.embed.embedding[...][ids]
  return model.head.kernel[...].T[ids]


def scaled_direction(d_D, norm: float) -> np.ndarray:
  """d rescaled to `norm` (a steering vector whose strength 1 moves the stream by `norm`)."""
  d_D = np.asarray(d_D, np.float64)
  length = np.linalg.norm(d_D)
  if not length > 0:
    raise ValueError("a steering direction of norm 0: the two prompt sets or tokens give the "
                     "same hidden states at this layer (e.g. layer 0, the embeddings, for the "
                     "activations vector of sentence-final states)")
  return (d_D * (norm / length)).astype(np.float32)
