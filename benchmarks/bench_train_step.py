"""End-to-end training throughput of ~350M / ~1B LMs: tokens/s and model FLOPs utilisation (MFU).

  python -m benchmarks.bench_train_step --archs transformer,loglinear_mamba2 --seq_len 16384
  python -m benchmarks.bench_train_step --archs transformer,path_fox --seq_len 4096
  python -m benchmarks.bench_train_step --size 1b --archs transformer --seq_len 2048 \
      --tokens 16384 --mesh data=1,tensor=2 --residual_modes standard,ladder   # 2 GPUs
  python -m benchmarks.bench_train_step --size smoke --seq_len 64 --tokens 256  # CPU
  python -m benchmarks.bench_train_step --archs loglinear_mamba2 --seq_len 16384 \
      --remat none,dots_and_mixer_core --memory        # where the memory goes, per remat policy

One AdamW train step (bf16 compute unless --dtype, fp32 parameters, the trainer's jitted step)
on random tokens, median over --steps after a compile step, every architecture in this one
process. Each step takes a fresh batch (all made before timing), so the last step's loss is a
sanity check: on uniform random tokens no causal model gets below ln(vocab) in expectation (the
table's `loss` beside it); a loss well below means the model reads its targets.
Mixers run with model.mixer_impl / attention_impl = "auto": Pallas kernels on Hopper where
lloglin has them, cuDNN attention for 16-bit compute.

MFU = model FLOPs per second / --peak_tflops (989: H100/H200 SXM dense bf16). Model FLOPs per
token = 6 x (parameters in matmuls, LM head included, embedding lookup excluded) plus, for softmax
and PaTH attention layers, the causal score and value products 6 x T x heads x head_dim per
layer (fwd 2 x, bwd 4 x; half of T x T is masked). Linear-time mixers' state products are not
counted (they are small next to their projections at these sizes), so their MFU is a lower
bound. PaTH's Householder work is not counted either.

--remat (comma-separated `model.remat` values, lloglin.layers.remat) gives one row per policy.
--memory prints, per architecture and policy, what one block saves for its backward pass (by the
code that made it) and XLA's compiled memory of one block's fwd+bwd and of the whole step, in
GiB (benchmarks/memory_accounting.py), and adds to each row the step's compiled peak and the
device's peak bytes in use (the process's peak so far: run one row per process for each row's
own; "fits" is whether the step compiled and ran).

--mesh (e.g. `data=2,tensor=1`, `data=1,tensor=2`; the axes of lloglin.parallel.mesh, unnamed
ones at their defaults) runs the step as the trainer does: the train state sharded by the
logical-axis rules, the batch split over the batch axes, the step under `jax.set_mesh`, so a
tensor axis > 1 runs the blocks tensor-parallel in one shard_map with the residual wiring of
--residual_modes (standard | ladder | parallel | desync). MFU is per device (divided by the
mesh's device count); the table gives ladder / standard per architecture and mesh.
"""

import argparse
import contextlib
import json
import math
import statistics
from types import SimpleNamespace as NS

from lloglin.layers.remat import REMAT_POLICIES
from lloglin.models.ladder import RESIDUAL_MODES

ARCHS = ("transformer", "mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path", "path_fox")
ATTENTION_LIKE = {"attention", "path", "path_fox"}
# d_model, layers, heads, head dim, MLP, vocab: GPT-2 medium with SwiGLU (374M with the untied
# head). Mamba-2 models have no MLP and 44 layers instead (Mamba-2 370M has 48), which matches
# the Transformer's parameter count within 1% for log-linear Mamba-2.
# `1b`: Llama-3.2-1B's body (GQA with 8 kv heads) with a 32000 vocabulary, untied (1.1B).
SIZES = {"350m": dict(d_model=1024, num_layers=24, num_heads=16, head_dim=64, mlp_dim=2816,
                      vocab_size=32000),
         "1b": dict(d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                    mlp_dim=8192, vocab_size=32000),
         "smoke": dict(d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128,
                       vocab_size=256)}


def model_config(arch: str, size: str, seq_len: int, residual_mode: str = "standard",
                 attention_impl: str = "auto", dtype: str = "bfloat16", remat: str = "none"):
  from lloglin.models import ModelConfig
  s = dict(SIZES[size])
  s.setdefault("num_kv_heads", s["num_heads"])
  mixer = "attention" if arch == "transformer" else arch
  options = {}
  if mixer.endswith("mamba2"):
    s.update(num_layers=s["num_layers"] * 11 // 6, mlp_dim=0)
    options = {mixer: {"d_state": 16 if size == "smoke" else 128, "expand": 2}}
  elif mixer.endswith("gdn"):
    options = {mixer: {"num_heads": s["num_heads"] // 2, "head_dim": 2 * s["head_dim"],
                       "expand_v": 1}}
  return ModelConfig(layer_pattern=mixer, max_seq_len=seq_len, dtype=dtype,
                     tie_embeddings=False, mixer_options=options, residual_mode=residual_mode,
                     attention_impl=attention_impl, remat=remat, **s)


def parse_mesh(text: str) -> dict | None:
  """'data=1,tensor=2' -> {'data': 1, 'tensor': 2}, the dict make_mesh takes ('' -> None)."""
  if not text:
    return None
  out = {}
  for item in text.split(","):
    name, _, size = item.partition("=")
    try:
      out[name.strip()] = int(size)
    except ValueError:
      raise ValueError(f"--mesh={text!r}: item {item!r} is not axis=size; expected e.g. "
                       f"'data=1,tensor=2'") from None
  return out


def matmul_params(model) -> int:
  """Parameters that enter a matmul: every weight with ndim >= 2 except the embedding table."""
  from flax import nnx
  from lloglin.optim import path_str
  import jax
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  return sum(x.size for path, x in flat if x.ndim >= 2 and "embed" not in path_str(path))


def flops_per_token(cfg, n_matmul: int, seq_len: int) -> float:
  attention_layers = sum(m in ATTENTION_LIKE for m in cfg.mixers)
  return 6 * n_matmul + 6 * seq_len * cfg.num_heads * cfg.head_dim * attention_layers


def mesh_name(mesh) -> str:
  return "-" if mesh is None else ",".join(f"{a}={n}" for a, n in mesh.shape.items())


def block_memory(arch: str, cfg, args) -> dict:
  """--memory's per-block accounting (printed) and its totals (for the row)."""
  from benchmarks import memory_accounting as acc
  batch = args.tokens // args.seq_len
  res = acc.saved_residuals(cfg, args.seq_len, batch)
  mixer_res = acc.saved_residuals(cfg, args.seq_len, batch, mixer_only=True)
  comp = acc.block_compiled(cfg, args.seq_len, batch)
  acc.print_block_report(arch, cfg.remat, cfg, args.seq_len, batch, res, mixer_res, comp)
  return dict(block_saved_gib=res["total_gib"], mixer_saved_gib=mixer_res["total_gib"],
              block_fwdbwd_peak_gib=None if comp is None else comp["peak"])


def device_memory_gib() -> dict:
  """The device's peak bytes in use so far and its allocator's limit, GiB (empty where the
  backend keeps no statistics, as on CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  names = {"peak_bytes_in_use": "device_peak_gib", "bytes_limit": "device_limit_gib"}
  return {name: stats[key] / 2**30 for key, name in names.items() if key in stats}


def run(arch: str, residual_mode: str, remat: str, args, mesh=None, memory=None) -> dict:
  """One row; with `mesh`, the state and batch sharded on it and the step run under it. With
  --memory, `memory` (a dict) receives the accounting as it is made, so that a row whose step
  fails (out of memory) still reports what the compiler said."""
  import jax
  import numpy as np

  from benchmarks.timing import synthetic_batches, time_train_steps
  from lloglin.models import build_model, count_params
  from lloglin.parallel import distributed, sharding
  from lloglin.training.step import make_program

  cfg = model_config(arch, args.size, args.seq_len, residual_mode, args.attention_impl,
                     args.dtype, remat)
  memory = {} if memory is None else memory
  if args.memory:
    memory.update(block_memory(arch, cfg, args))
  model = build_model(cfg)
  n_params, n_matmul = count_params(model), matmul_params(model)
  optim_cfg = NS(name="adamw", learning_rate=1e-4, warmup_steps=0, min_lr_ratio=0.1, b1=0.9,
                 b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0)
  program = make_program(optim_cfg, model, num_steps=args.steps + 1)
  batch = args.tokens // args.seq_len
  batches = synthetic_batches(cfg.vocab_size, batch, args.seq_len, args.steps + 1)
  devices = 1
  if mesh is not None:
    program = program._replace(state=sharding.shard_state(program.state, model, mesh))
    batches = [distributed.global_batch(data, mesh) for data in batches]
    devices = mesh.size
  del model
  if args.memory:  # compile once, read its memory, and time that executable
    from benchmarks.memory_accounting import compiled_gib
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      compiled = program.train_step.lower(program.state, batches[0]).compile()
    memory["step_compiled"] = compiled_gib(compiled)
    program = program._replace(train_step=compiled)
  if mesh is not None:
    program = program._replace(train_step=sharding.use_mesh(mesh, program.train_step))
  _, times, metrics = time_train_steps(program, batches)
  step_s = statistics.median(times)
  tokens_s = batch * args.seq_len / step_s
  mfu = (tokens_s * flops_per_token(cfg, n_matmul, args.seq_len)
         / (args.peak_tflops * 1e12 * devices))
  if args.memory:
    memory.update(device_memory_gib())
  return dict(arch=arch, residual_mode=residual_mode, remat=remat, mesh=mesh_name(mesh),
              devices=devices, **memory,
              params=n_params, matmul_params=n_matmul, seq_len=args.seq_len, batch=batch,
              step_ms=1e3 * step_s, tokens_per_s=tokens_s, mfu=mfu,
              loss=float(metrics["loss"]), loss_uniform=math.log(cfg.vocab_size),
              device=jax.devices()[0].device_kind,
              step_ms_spread=1e3 * float(np.ptp(times)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--archs", default="transformer,loglinear_mamba2")
  p.add_argument("--size", default="350m", choices=sorted(SIZES))
  p.add_argument("--seq_len", type=int, default=16384)
  p.add_argument("--tokens", type=int, default=32768, help="tokens per step (batch x seq_len)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=989.0)
  p.add_argument("--mesh", default="", help="e.g. data=2,tensor=1 (default: one device, no mesh)")
  p.add_argument("--residual_modes", default="standard",
                 help=f"comma-separated, from {list(RESIDUAL_MODES)}")
  p.add_argument("--attention_impl", default="auto", choices=("auto", "xla", "cudnn"))
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="compute dtype (float32 for CPU meshes: XLA:CPU fails on bf16 all-reduces)")
  p.add_argument("--remat", default="none",
                 help=f"comma-separated model.remat values, from {list(REMAT_POLICIES)}")
  p.add_argument("--memory", action="store_true",
                 help="print where the memory goes (per block and whole step, GiB)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  archs, modes = args.archs.split(","), args.residual_modes.split(",")
  remats = args.remat.split(",")
  for name, values, valid in (("archs", archs, ARCHS), ("residual_modes", modes, RESIDUAL_MODES),
                              ("remat", remats, REMAT_POLICIES)):
    unknown = sorted(set(values) - set(valid))
    if unknown:
      p.error(f"--{name}: unknown {unknown}; choose from {list(valid)}")
  if args.tokens % args.seq_len:
    p.error(f"--tokens={args.tokens} is not a multiple of --seq_len={args.seq_len}")
  mesh = None
  if args.mesh:
    from lloglin.parallel.mesh import make_mesh
    try:
      mesh = make_mesh(parse_mesh(args.mesh))
    except ValueError as e:
      p.error(str(e))
  rows = []
  for arch in archs:
    for remat in remats:
      for mode in modes:
        memory = {}
        try:
          rows.append(run(arch, mode, remat, args, mesh, memory))
        except Exception as e:  # e.g. out of memory: report it and time the others
          rows.append(dict(arch=arch, residual_mode=mode, remat=remat, mesh=mesh_name(mesh),
                           seq_len=args.seq_len, **memory,
                           error=f"{type(e).__name__}: {str(e)[:300]}"))
        print(json.dumps(rows[-1]), flush=True)
  _print_table(rows)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


def _print_table(rows):
  """The rows as a markdown table. x Transformer: against the Transformer row of the same
  residual mode and mesh without remat (else with the same remat); memory columns with --memory
  (step: compiled peak of the train step; device: peak bytes in use)."""
  ok = {(r["arch"], r["residual_mode"], r["mesh"], r["remat"]): r
        for r in rows if "error" not in r}
  print("| arch | remat | residual | mesh | params | T | batch | step ms | tokens/s "
        "| MFU per device | x Transformer | ladder / standard | step GiB | device peak GiB "
        "| loss (ln vocab) |")
  print("|" + " --- |" * 15)
  gib = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
  for r in rows:
    head = f"| {r['arch']} | {r['remat']} | {r['residual_mode']} | {r['mesh']} |"
    step = r.get("step_compiled")
    if "error" in r:
      print(f"{head} - | {r['seq_len']} | - | - | {r['error'][:60]} | - | - | - "
            f"| {gib(step and step['peak'])} | - | - |")
      continue
    key = ("transformer", r["residual_mode"], r["mesh"])
    base = ok.get(key + ("none",)) or ok.get(key + (r["remat"],))
    ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
    std, lad = (ok.get((r["arch"], m, r["mesh"], r["remat"])) for m in ("standard", "ladder"))
    ladder = (f"x{lad['tokens_per_s'] / std['tokens_per_s']:.3f}"
              if std and lad and r["residual_mode"] == "ladder" else "-")
    print(f"{head} {r['params'] / 1e6:.0f}M | {r['seq_len']} | {r['batch']} "
          f"| {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {ratio} "
          f"| {ladder} | {gib(step and step['peak'])} | {gib(r.get('device_peak_gib'))} "
          f"| {r['loss']:.2f} ({r['loss_uniform']:.2f}) |")


if __name__ == "__main__":
  main()
