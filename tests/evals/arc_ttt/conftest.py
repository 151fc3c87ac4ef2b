"""The arc_ttt tests compile small programs once each: without most XLA optimizations, as
tests/optim does."""

from tests.optim.conftest import _fast_compile  # noqa: F401  (an autouse fixture)
