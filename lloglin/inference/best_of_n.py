"""Best-of-n selection: n responses sampled from a lloglin LM, the one a reward model scores
highest kept (reWordBench's alignment use of a reward model, n = 64 there).

    picks = best_of_n(lm, reward_model, ["List fruit words.\\n"], n=8, tokenizer=tok,
                      max_new_tokens=40, temperature=1.0)
    picks[0].best, picks[0].candidates, picks[0].rewards

The n candidates of a prompt are n rows of one `generate` call (the same prompt repeated; every
row draws its own tokens), every prompt's rows in one batch; a candidate ends at the LM
tokenizer's EOS (dropped from its text) or after max_new_tokens. Each candidate is scored as the
reward task trains: the row [BOS] + prompt + candidate + [EOS] of the reward tokenizer
(lloglin.data.preferences.encode_row, the prompt cut from the left to fit the reward model's
max_seq_len).
"""

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lloglin.data.preferences import encode_row, pack_rows
from lloglin.data.tokenizers import Tokenizer
from lloglin.inference.generate import generate

_BUCKET = 64  # reward rows are padded to a multiple: fewer compilations


@dataclasses.dataclass(frozen=True)
class BestOfN:
  """One prompt's pick: the best candidate, every candidate and its reward."""
  prompt: str
  best: str
  best_index: int
  candidates: list[str]
  rewards: list[float]


@nnx.jit
def _rewards(model, tokens_BT, segment_ids_BT):
  return model(tokens_BT, segment_ids_BT=segment_ids_BT)


def score_responses(reward_model, tokenizer: Tokenizer, prompts: Sequence[str],
                    responses: Sequence[str]) -> np.ndarray:
  """The rewards [len(responses)] of response i to prompt i, as the reward task reads them."""
  max_len = reward_model.cfg.max_seq_len
  rows = [encode_row(tokenizer, p, r, max_len, where=f"responses[{i}]")
          for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
  T = min(-(-max(len(r) for r in rows) // _BUCKET) * _BUCKET, max_len)
  batch = pack_rows({"row": rows}, T)
  return np.asarray(_rewards(reward_model, jnp.asarray(batch["row"]),
                             jnp.asarray(batch["row_segment_ids"])))


def best_of_n(lm, reward_model, prompts: Sequence[str], n: int, *, tokenizer: Tokenizer,
              reward_tokenizer: Tokenizer | None = None, max_new_tokens: int,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              seed: int = 0) -> list[BestOfN]:
  """For every prompt, n responses sampled from `lm` (lloglin.inference.generate, prompts
  encoded by `tokenizer` after its BOS) and the highest-reward one under `reward_model` (rows
  encoded by `reward_tokenizer`, by default `tokenizer`); ties go to the first candidate.
  Sampling arguments as `generate`'s."""
  if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"prompts: expected a non-empty list of strings, got {prompts!r:.80}")
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"n={n!r}; expected an int >= 1")
  reward_tokenizer = reward_tokenizer or tokenizer
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  stop = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  rows = [bos + tokenizer.encode(p) for p in prompts for _ in range(n)]
  samples = generate(lm, rows, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     seed=seed, stop_tokens=stop)
  texts = [tokenizer.decode(s) for s in samples]
  rewards = score_responses(reward_model, reward_tokenizer,
                            [p for p in prompts for _ in range(n)], texts)
  picks = []
  for i, prompt in enumerate(prompts):
    r = rewards[i * n:(i + 1) * n]
    best = int(np.argmax(r))
    picks.append(BestOfN(prompt, texts[i * n + best], best, texts[i * n:(i + 1) * n],
                         [float(x) for x in r]))
  return picks
