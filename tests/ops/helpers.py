"""Shared test helpers for lloglin ops (the error metric of docs/correctness.md#error-metric).

`assert_close(out, ref, *, rel, maxabs=None, name="")` is used by every ops test; keep its API.
"""

import numpy as np


def rel_error(out, ref):
  """||ref - out||_2 / ||ref||_2 over the whole tensor (inf when ref == 0 and out != ref)."""
  out = np.asarray(out, np.float64)
  ref = np.asarray(ref, np.float64)
  diff = np.linalg.norm((ref - out).ravel())
  denom = np.linalg.norm(ref.ravel())
  if denom == 0.0:
    return 0.0 if diff == 0.0 else np.inf
  return float(diff / denom)


def assert_close(out, ref, *, rel, maxabs=None, name=""):
  """fla's metric: out must be finite; rel = ||ref-out||/||ref|| <= rel unless max|ref-out| <= 1e-6.

  maxabs, when given, additionally bounds max|ref - out|.
  """
  out = np.asarray(out, np.float64)
  ref = np.asarray(ref, np.float64)
  label = f"{name}: " if name else ""
  assert out.shape == ref.shape, f"{label}shape {out.shape} != reference shape {ref.shape}"
  assert np.all(np.isfinite(out)), f"{label}{np.sum(~np.isfinite(out))} non-finite values"
  assert np.all(np.isfinite(ref)), f"{label}reference has non-finite values"
  err = float(np.max(np.abs(ref - out))) if out.size else 0.0
  if maxabs is not None:
    assert err <= maxabs, f"{label}max abs error {err:.3e} > {maxabs:.3e}"
  if err <= 1e-6:
    return
  r = rel_error(out, ref)
  assert r <= rel, f"{label}rel error {r:.3e} > {rel:.3e} (max abs error {err:.3e})"
