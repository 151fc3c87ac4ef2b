"""Best-of-n: the candidates are the LM's n samples, the pick the argmax of their rewards."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.data.preferences import encode_row, pack_rows
from lloglin.data.tokenizers import ByteTokenizer
from lloglin.inference.best_of_n import best_of_n
from lloglin.inference.generate import generate
from lloglin.models import build_model
from lloglin.models.reward import build_reward_model
from tests.inference.helpers import tiny_config

PROMPTS = ["List fruit words.\n", "What is 2+3?\n"]
SAMPLING = dict(max_new_tokens=6, temperature=1.0, seed=3)


def test_the_pick_is_the_argmax_of_the_rewards_of_n_samples():
  tok = ByteTokenizer()
  cfg = tiny_config("attention", vocab_size=tok.vocab_size, max_seq_len=64)
  lm, rm = build_model(cfg, seed=1), build_reward_model(cfg, seed=2)
  picks = best_of_n(lm, rm, PROMPTS, 4, tokenizer=tok, **SAMPLING)
  rows = [[tok.bos_id, *tok.encode(p)] for p in PROMPTS for _ in range(4)]
  samples = [tok.decode(s) for s in generate(lm, rows, SAMPLING["max_new_tokens"],
                                             temperature=1.0, seed=3, stop_tokens=[tok.eos_id])]
  for i, (prompt, pick) in enumerate(zip(PROMPTS, picks)):
    assert pick.prompt == prompt and pick.candidates == samples[4 * i:4 * i + 4]
    assert len(set(pick.candidates)) > 1  # n draws, not one repeated
    # The rewards again, from rows padded to their longest rather than to a bucket of 64.
    rows = [encode_row(tok, prompt, text, 64, where="test") for text in pick.candidates]
    batch = pack_rows({"row": rows}, max(len(r) for r in rows))
    again = nnx.jit(lambda m, t, s: m(t, segment_ids_BT=s))(
        rm, jnp.asarray(batch["row"]), jnp.asarray(batch["row_segment_ids"]))
    np.testing.assert_allclose(pick.rewards, again, rtol=1e-5, atol=1e-6)
    assert pick.best_index == int(np.argmax(pick.rewards))
    assert pick.best == pick.candidates[pick.best_index]
  with pytest.raises(ValueError, match="n=0; expected an int >= 1"):
    best_of_n(lm, rm, PROMPTS, 0, tokenizer=tok, **SAMPLING)
