"""The model's configuration: a frozen dataclass built from the `model` section of a config."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from lloglin.layers.remat import check_remat
from lloglin.models.ladder import check_residual_options

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float64": jnp.float64}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and choices of a decoder LM. Short names follow the array-name letters (D, H, K...)."""
  vocab_size: int
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 64
  mlp_dim: int = 1024
  layer_pattern: str = "attention"
  tie_embeddings: bool = True
  rope_theta: float = 10_000.0
  max_seq_len: int = 2048
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"
  chunk_size: int = 64
  mixer_impl: str = "auto"
  mixer_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  # Residual wiring (lloglin.models.ladder): standard | ladder | parallel | desync. Layers below
  # residual_start_layer stay standard (hybrid models). Desync keeps the all-reduce of
  # `desync_reduce` (mlp | mixer | both) on every `desync_every`-th layer and skips the others.
  residual_mode: str = "standard"
  residual_start_layer: int = 0
  desync_every: int = 1
  desync_reduce: str = "mlp"
  # Rematerialisation of each residual branch (mixer or MLP, with its norm) in training: none |
  # dots_saveable | dots_and_kernels | dots_with_no_batch_dims_saveable | dots_and_mixer_core |
  # mixer_core | block (lloglin.layers.remat documents each).
  remat: str = "none"

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads ({self.num_heads}) must be a multiple of "
                       f"model.num_kv_heads ({self.num_kv_heads})")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")
    if not self.mixers:
      raise ValueError("model.layer_pattern is empty; expected comma-separated mixer names")
    check_residual_options(self.residual_mode, self.residual_start_layer, self.desync_every,
                           self.desync_reduce, self.num_layers)
    check_remat(self.remat)

  @property
  def mixers(self) -> tuple[str, ...]:
    """The mixer name of every layer: `layer_pattern` cycled over `num_layers`."""
    pattern = [name.strip() for name in self.layer_pattern.split(",") if name.strip()]
    if not pattern:
      return ()
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  def options(self, mixer: str) -> dict[str, Any]:
    """Extra keyword options of one mixer (`model.mixer_options.<mixer>`)."""
    return dict(self.mixer_options.get(mixer, {}))

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds the config, naming any unknown key together with the valid ones."""
    values = dict(values)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
      raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(valid)}")
    values["mixer_options"] = {k: dict(v) for k, v in dict(values.get("mixer_options", {})).items()}
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["mixer_options"] = {k: dict(v) for k, v in self.mixer_options.items()}
    return out
