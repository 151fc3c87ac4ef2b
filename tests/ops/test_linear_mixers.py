"""Mamba-2 SSD, Gated DeltaNet and their log-linear versions (lloglin.ops.mamba2, .gdn, .loglinear
over .linear_recurrence): recurrent == quadratic == chunked == decode
(docs/correctness.md#the-chain).

One chain (tests/ops/linear_mixers.py) runs over the four families. What one family alone has is
in test_mamba2.py and test_gdn.py (the update rules written out by hand) and test_loglinear.py
(lam = 1, single levels, Fenwick carries, level capacity).
"""

import pytest

from tests.ops import linear_mixers as lm

SWEEP = [(1, 16), (15, 16), (16, 16), (17, 32), (63, 32), (64, 16), (65, 64), (127, 32),
         (128, 64), (200, 16), (256, 16)]


@pytest.fixture(params=list(lm.FAMILIES))
def fam(request):
  return lm.FAMILIES[request.param]


def test_recurrent_equals_quadratic(fam):
  lm.check_oracles_agree(fam)


@pytest.mark.parametrize('T,C', SWEEP)
def test_chunked_equals_oracle(fam, T, C):
  lm.check_chunked_vs_oracle(fam, T, C)


def test_chunk_size_invariance_and_final_state_fp64(fam):
  lm.check_chunk_invariance_fp64(fam)


def test_decode_every_position(fam):
  lm.check_decode_every_position(fam)


@pytest.mark.parametrize('T0', [1, 70])
def test_prefill_then_decode(fam, T0):
  lm.check_prefill_then_decode(fam, T0)


def test_packed_equals_separate(fam):
  lm.check_packed_equals_separate(fam)


def test_initial_state_with_packed_documents(fam):
  lm.check_initial_state_with_packed_documents(fam)


@pytest.mark.parametrize('tau', [None, 0.1])
def test_gradients_dense(fam, tau):
  lm.check_gradients(fam, packed=False, tau=tau)


def test_gradients_packed_nan_padding(fam):
  lm.check_gradients(fam, packed=True)


def test_gqa(fam):
  lm.check_gqa(fam)


def test_bf16(fam):
  lm.check_bf16(fam)


def test_bad_inputs(fam):
  lm.check_bad_inputs(fam)
