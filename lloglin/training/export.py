"""Params-only export: the weights and the config, loadable without the optimizer state."""

import json
import os

import jax
import orbax.checkpoint as ocp


def export_params(directory: str, params, config: dict):
  """Writes `<directory>/params` (orbax) and `<directory>/config.json`.

  Every process calls it (orbax synchronises the processes); process 0 writes the JSON.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "params"), params, force=True)
  if jax.process_index() == 0:
    with open(os.path.join(directory, "config.json"), "w") as f:
      json.dump(config, f, indent=2)


def is_export(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, "config.json")) and os.path.isdir(
      os.path.join(directory, "params"))


def load_params(directory: str, params_like):
  """Restores exported params into the structure (and shardings) of `params_like`."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(os.path.abspath(directory), "params"), params_like)


def read_export_config(directory: str) -> dict:
  with open(os.path.join(directory, "config.json")) as f:
    return json.load(f)
