"""Generation over decode caches (prefill + decode loop) and next-token sampling."""

from lloglin.inference.generate import DECODE_IMPLS, generate  # noqa: F401
from lloglin.inference.sampling import sample_token  # noqa: F401
