"""PaTH attention (and PaTH-FoX) as Pallas GPU kernels: `kernel.py` (the default) and
`linear_memory.py` (memory linear in T but slower, for long contexts)."""

from pallas_kernels.path.common import KernelConfig, supports
from pallas_kernels.path.kernel import path_attention
from pallas_kernels.path.linear_memory import path_attention_linear_memory

__all__ = ["KernelConfig", "path_attention", "path_attention_linear_memory", "supports"]
