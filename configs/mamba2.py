"""Mamba-2 at ~125M parameters (configs/architectures.py).

Variant `:tiny`: a seconds-long MQAR run for the tests.
"""

from configs.architectures import architecture_config


def get_config(arg: str | None = None):
  return architecture_config("mamba2", arg)
