"""Generation over decode caches (prefill + decode loop) and next-token sampling."""

from lloglin.inference.fused import fused_decode_supported  # noqa: F401
from lloglin.inference.generate import DECODE_IMPLS, generate, resolve_decode_impl  # noqa: F401
from lloglin.inference.sampling import sample_token  # noqa: F401
