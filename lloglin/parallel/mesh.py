"""Device meshes from config: axes ('data', 'fsdp', 'tensor'), any device count, one host or many.

`c.mesh` in a config gives the size of each axis; -1 means "all the devices the other axes leave"
(at most one axis may say -1). The default `data=-1, fsdp=1, tensor=1` is plain data parallelism.
A fully fixed mesh smaller than the machine uses its first devices (single process only), e.g.
`data=1` for a one-device run on a multi-device host.

  data    batch split, parameters replicated (gradients all-reduced)
  fsdp    batch split AND parameters/optimizer state split along their `embed` dimension
          (all-gathered for the forward, gradients reduce-scattered by XLA)
  tensor  Megatron-style tensor parallelism inside each layer (heads / MLP width split,
          explicit psum; see lloglin.parallel.tensor_parallel)

Devices are laid out process-major with `tensor` the fastest-varying axis, so a tensor group stays
inside one host (fast links) and `data` spans hosts. Axis types are Auto (GSPMD): the jitted train
step shards by the input shardings, and tensor parallelism uses explicit `jax.shard_map`.
"""

import logging
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch dimension is split over


def mesh_shape(mesh_cfg: Mapping | None, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes from a `mesh` config section, with -1 resolved."""
  mesh_cfg = dict(mesh_cfg.to_dict() if hasattr(mesh_cfg, "to_dict") else (mesh_cfg or {}))
  unknown = sorted(set(mesh_cfg) - set(AXES))
  if unknown:
    raise ValueError(f"unknown mesh axis name(s) {unknown}; valid: {list(AXES)}")
  sizes = {a: int(mesh_cfg.get(a, -1 if a == "data" else 1)) for a in AXES}
  for a, n in sizes.items():
    if n == 0 or n < -1:
      raise ValueError(f"mesh.{a}={n}; expected a positive size or -1 (the remaining devices)")
  free = [a for a, n in sizes.items() if n == -1]
  if len(free) > 1:
    raise ValueError(f"mesh axes {free} are all -1; at most one axis may take the rest")
  fixed = 1
  for a, n in sizes.items():
    if n != -1:
      fixed *= n
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes}: the fixed axes ({fixed} devices) do not divide the "
                       f"{num_devices} devices")
    sizes[free[0]] = num_devices // fixed
  elif fixed > num_devices or num_devices % fixed:
    raise ValueError(f"mesh {sizes} needs {fixed} devices, but {num_devices} are present; "
                     f"set one axis to -1 to take the rest")
  return tuple(sizes[a] for a in AXES)


def make_mesh(mesh_cfg: Mapping | None = None, devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') Auto mesh over `devices` (default: all devices, all hosts).

  Multi-process: each process must own whole batch shards (data * fsdp a multiple of the process
  count), because every process feeds its own rows of the global batch.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  n_proc = len({d.process_index for d in devices})
  size = int(np.prod(shape))
  if size < len(devices):  # a fixed mesh smaller than the machine: the first devices, one host
    if n_proc > 1:
      raise ValueError(f"mesh (data, fsdp, tensor)={shape} uses {size} of {len(devices)} devices "
                       f"over {n_proc} processes; a multi-process mesh must use every device")
    devices = devices[:size]
  if n_proc > 1 and (shape[0] * shape[1]) % n_proc:
    raise ValueError(f"mesh (data, fsdp, tensor)={shape} over {n_proc} processes: data * fsdp "
                     f"must be a multiple of the process count, so that each process feeds its "
                     f"own batch rows (keep the tensor axis inside one host)")
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  mesh = jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
  log.info("mesh %s over %d processes", " x ".join(f"{a}={n}" for a, n in zip(AXES, shape)),
           n_proc)
  return mesh


def axis_size(mesh, name: str) -> int:
  """Size of axis `name` in `mesh` (a Mesh or AbstractMesh); 1 when the mesh lacks it."""
  if mesh is None or getattr(mesh, "empty", False):
    return 1
  return dict(mesh.shape).get(name, 1)


def current_mesh():
  """The mesh set by `jax.set_mesh` (an AbstractMesh inside jit), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def tensor_size() -> int:
  """Tensor-parallel degree of the current mesh (1 outside any mesh)."""
  return axis_size(current_mesh(), "tensor")
