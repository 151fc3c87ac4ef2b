"""Tiny models for the decode tests (float32, CPU): d_model 32, small vocab, chunk 64."""

import numpy as np

from lloglin.models import ModelConfig

MIXER_OPTIONS = {"mamba2": {"d_state": 8}, "loglinear_mamba2": {"d_state": 8},
                 "gdn": {"num_heads": 2, "num_v_heads": 4},
                 "loglinear_gdn": {"num_heads": 2, "num_v_heads": 4}}


def tiny_config(layer_pattern: str, **overrides) -> ModelConfig:
  values = dict(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                mlp_dim=64, max_seq_len=1024, chunk_size=64, layer_pattern=layer_pattern,
                mixer_options=MIXER_OPTIONS)
  values.update(overrides)
  return ModelConfig(**values)


def assert_close_to_scale(out, ref, rel=1e-4):
  """max |out - ref| <= rel * max |ref| (docs/correctness.md#error-metric)."""
  out, ref = np.asarray(out), np.asarray(ref)
  assert np.isfinite(out).all()
  err, scale = np.abs(out - ref).max(), np.abs(ref).max()
  assert err <= rel * scale, f"max error {err:.3g} > {rel} * logit scale {scale:.3g}"
