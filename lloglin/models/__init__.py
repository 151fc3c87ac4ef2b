"""Assembled models."""

from lloglin.models.config import ModelConfig  # noqa: F401
from lloglin.models.decoder import DecoderLM, build_model, count_params  # noqa: F401
