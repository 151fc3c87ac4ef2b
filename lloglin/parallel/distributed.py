"""Multi-host start-up, the data-parallel mesh, and assembling each process's batch rows."""

import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

_ENV = {"coordinator_address": "LLOGLIN_COORDINATOR_ADDRESS",
        "num_processes": "LLOGLIN_NUM_PROCESSES", "process_id": "LLOGLIN_PROCESS_ID"}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when a multi-process run is configured.

  Arguments win over the environment (LLOGLIN_COORDINATOR_ADDRESS, LLOGLIN_NUM_PROCESSES,
  LLOGLIN_PROCESS_ID). Returns False (and does nothing) for a single-process run.
  """
  args = {"coordinator_address": coordinator_address, "num_processes": num_processes,
          "process_id": process_id}
  for name, var in _ENV.items():
    if args[name] in (None, "") and os.environ.get(var):
      args[name] = os.environ[var]
  if not args["coordinator_address"]:
    return False
  if args["num_processes"] in (None, "") or args["process_id"] in (None, ""):
    raise ValueError("a multi-process run needs coordinator_address, num_processes and "
                     f"process_id together; got {args}")
  jax.distributed.initialize(coordinator_address=args["coordinator_address"],
                             num_processes=int(args["num_processes"]),
                             process_id=int(args["process_id"]))
  return True


def data_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles each process's local rows into global arrays split over the mesh's batch axes
  ('data' and 'fsdp' where present); the global batch has process_count x the local rows."""
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  n = int(np.prod([mesh.shape[a] for a in axes]))
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    rows = v.shape[0] * jax.process_count()
    if rows % n:
      raise ValueError(f"global batch of {rows} rows ({k}) is not divisible by the {n} batch "
                       f"shards of mesh axes {axes}; change batch_size or the mesh")
    sharding = NamedSharding(mesh, P(axes))
    out[k] = jax.make_array_from_process_local_data(sharding, v, (rows,) + v.shape[1:])
  return out
