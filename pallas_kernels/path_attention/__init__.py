"""PaTH attention (and PaTH-FoX) as a Pallas GPU kernel; see `kernel.py`."""

from pallas_kernels.path_attention.kernel import KernelConfig, path_attention, supports

__all__ = ["KernelConfig", "path_attention", "supports"]
