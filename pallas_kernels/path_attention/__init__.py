"""PaTH attention (and PaTH-FoX) as a Pallas GPU kernel; see `kernel.py`."""

from pallas_kernels.path_attention.kernel import path_attention, supports

__all__ = ["path_attention", "supports"]
