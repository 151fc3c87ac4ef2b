"""NNX layers. Importing this package registers every built-in mixer."""

from lloglin.layers import attention  # noqa: F401  (registers "attention")
from lloglin.layers import gdn  # noqa: F401  (registers "gdn", "loglinear_gdn")
from lloglin.layers import mamba2  # noqa: F401  (registers "mamba2", "loglinear_mamba2")
from lloglin.layers import path  # noqa: F401  (registers "path", "path_fox")
from lloglin.layers.registry import make_mixer, mixer_names, register_mixer  # noqa: F401
