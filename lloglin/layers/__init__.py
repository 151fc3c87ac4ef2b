"""NNX layers. Importing this package registers every built-in mixer."""

from lloglin.layers import attention  # noqa: F401  (registers "attention")
from lloglin.layers.registry import make_mixer, mixer_names, register_mixer  # noqa: F401
