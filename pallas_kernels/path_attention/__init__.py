"""PaTH attention (and PaTH-FoX) as a Pallas GPU kernel; see `kernel.py`."""

from pallas_kernels.path_attention.kernel import path_attention

__all__ = ["path_attention"]
