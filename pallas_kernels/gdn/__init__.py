"""Pallas kernels of Gated DeltaNet and log-linear Gated DeltaNet: `kernel.py` (the forward and
reverse chunk scans) and `chunked.py` (launch, the XLA parts and jax.custom_vjp)."""

from pallas_kernels.gdn.chunked import gdn_chunked, loglinear_gdn_chunked
from pallas_kernels.linear_recurrence import KernelConfig

__all__ = ["KernelConfig", "gdn_chunked", "loglinear_gdn_chunked"]
