"""Pallas kernels of Mamba-2 SSD and log-linear Mamba-2 (one level scan, hierarchy off or on):
`kernel.py` (the Pallas kernel) and `chunked.py` (launch and jax.custom_vjp)."""

from pallas_kernels.linear_recurrence import KernelConfig
from pallas_kernels.mamba2.chunked import loglinear_ssd_chunked, ssd_chunked

__all__ = ["KernelConfig", "loglinear_ssd_chunked", "ssd_chunked"]
