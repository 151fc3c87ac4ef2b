"""What the kernels ask of the device they run on."""

import jax


def on_hopper_gpu() -> bool:
  """True when the default device is an NVIDIA GPU of compute capability 9.0 or newer (Hopper+)."""
  device = jax.devices()[0]
  capability = getattr(device, "compute_capability", None)
  return device.platform == "gpu" and capability is not None and float(capability) >= 9.0
