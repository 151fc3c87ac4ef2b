"""Shared memory, registers and spills of lloglin's Pallas (Triton) kernels on sm_90, compiled on a
CPU: no GPU needed.

  pip install --no-deps --target /tmp/tritonsite triton==3.6.0
  PYTHONPATH=/tmp/tritonsite python -m benchmarks.triton_resources --mixers loglinear_gdn \
      --seqlens 2048,8192,32768 --warps 4,8 --stages 1,2

jax lowers every pallas_call of a mixer's forward + backward (bench_mixers' cases, 65,536 tokens,
16 heads x 128 unless --shape) to a Triton module for an abstract H200 (cross-lowering); the
triton package compiles each module for GPUTarget('cuda', 90, 32) with the given warps and
pipeline stages and reports `metadata.shared` (the H200 gives a block 227 KB) and, from the
package's `ptxas -v` on the PTX, registers per thread and bytes of register spills per thread
(255 registers is the ceiling; spills go to local memory, i.e. L1/L2/HBM traffic).

XLA's Triton pipeline differs from the triton package's, so a GPU can ask for more shared
memory than this script reports (the calibration against an H200 is in benchmarks/RESULTS.md,
"Every T in one command per T"): use the figures to compare configurations and to see what grows
with T, not as exact budgets. Relies on jax's private Pallas lowering entry point.
"""

import argparse
import os
import re
import subprocess


import jax
from jax._src.pallas.triton import pallas_call_registration

from benchmarks import bench_mixers


def triton_modules(mixer: str, shape: str, seq_len: int, impl: str = "pallas") -> list[str]:
  """The Triton modules (MLIR text) of the mixer's Pallas forward + backward (bench_mixers' row
  `impl`), lowered for CUDA."""
  modules = []
  lowering = pallas_call_registration.lowering
  original = lowering.lower_jaxpr_to_triton_module

  def capture(*args, **kwargs):
    result = original(*args, **kwargs)
    modules.append(result.module.operation.get_asm(enable_debug_info=False))
    return result

  heads, dim = bench_mixers.SHAPES[shape]
  x = jax.eval_shape(lambda: bench_mixers.jax_inputs(bench_mixers.TOKENS, seq_len, heads, dim,
                                                     jax.random.key(0)))
  fn, args = bench_mixers.jax_case(mixer, impl, x, interpret=False)   # lowered for CUDA here
  out = jax.eval_shape(fn, *args)
  dev = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", platform="gpu", num_cores=132)
  lowering.lower_jaxpr_to_triton_module = capture
  try:
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
      jax.jit(bench_mixers.fwd_bwd(fn)).trace(args, out).lower(lowering_platforms=("cuda",))
  finally:
    lowering.lower_jaxpr_to_triton_module = original
  return list(dict.fromkeys(modules))  # batch splits lower the same module more than once


def resources(module: str, num_warps: int, num_stages: int, workdir: str) -> dict:
  """{'shared_kb', 'registers', 'spill_bytes'} of the module compiled for sm_90."""
  import triton
  from triton.backends.compiler import GPUTarget
  name = re.search(r"module @(\S+)", module).group(1)
  path = os.path.join(workdir, f"{name}.ttir")
  with open(path, "w") as f:
    f.write(module)
  kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))
  ptx = os.path.join(workdir, f"{name}.ptx")
  with open(ptx, "w") as f:
    f.write(kernel.asm["ptx"])
  ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
  log = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", ptx, "-o", ptx + ".cubin"],
                       capture_output=True, text=True, check=True).stderr
  number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else None  # noqa: E731
  return dict(shared_kb=kernel.metadata.shared / 1024, registers=number(r"Used (\d+) registers"),
              spill_bytes=number(r"(\d+) bytes spill stores") or 0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
  p.add_argument("--mixers", type=csv, default=["loglinear_mamba2", "loglinear_gdn", "path"])
  p.add_argument("--shape", default="h16d128", choices=sorted(bench_mixers.SHAPES))
  p.add_argument("--seqlens", type=lambda s: [int(x) for x in csv(s)], default=[2048, 8192])
  p.add_argument("--warps", type=lambda s: [int(x) for x in csv(s)], default=[8])
  p.add_argument("--stages", type=lambda s: [int(x) for x in csv(s)], default=[1, 2])
  p.add_argument("--impl", default="pallas",
                 help="bench_mixers' row, e.g. pallas_level_scan (log-linear GDN's level scans)")
  p.add_argument("--workdir", default="/tmp/triton_resources")
  args = p.parse_args(argv)
  try:
    import triton  # noqa: F401
  except ImportError:
    p.error("the triton package is not importable: install it (see the module docstring) and "
            "put its folder on PYTHONPATH")
  os.makedirs(args.workdir, exist_ok=True)
  rows = []
  for mixer in args.mixers:
    for T in args.seqlens:
      for module in triton_modules(mixer, args.shape, T, args.impl):
        name = re.search(r"module @(\S+)", module).group(1)
        for warps in args.warps:
          for stages in args.stages:
            r = resources(module, warps, stages, args.workdir)
            rows.append(dict(mixer=mixer, seq_len=T, kernel=name, warps=warps, stages=stages, **r))
            print(f"{mixer:<18} T={T:<6} {name:<30} warps {warps:<2} stages {stages}: shared "
                  f"{r['shared_kb']:6.1f} KB, {r['registers']} registers, {r['spill_bytes']} "
                  "bytes spilled", flush=True)
  return rows


if __name__ == "__main__":
  main()
