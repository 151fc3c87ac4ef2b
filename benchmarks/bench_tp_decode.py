"""Decode tokens/s under tensor parallelism: standard vs ladder vs parallel residual, and the
no-communication upper bound.

  python -m benchmarks.bench_tp_decode                  # 1b and 8b, batch 1..64, TP = all GPUs
  python -m benchmarks.bench_tp_decode --models 8b --batches 1,4 --modes standard,ladder
  python -m benchmarks.bench_tp_decode --smoke          # CPU, 8 fake devices, tiny shape
  python -m benchmarks.bench_tp_decode --from_jsonl rows.jsonl --plot tp.png  # table + plot only

Llama shapes (random bf16 weights; speed does not depend on the values): `1b` is Llama-3.2-1B
(d 2048, 16 layers, 32 heads, 8 kv heads, MLP 8192, vocab 128256), `8b` is Llama-3.1-8B (d 4096,
32 layers, 32/8 heads, head dim 128, MLP 14336). TP degree = every device present unless --tp;
one GPU gives TP=1 sanity figures (no all-reduce, all modes equal up to noise).

Modes: the residual modes `standard`, `ladder`, `parallel`, and `nocomm`: the `desync` residual
mode with `desync_every` larger than the layer count, so every module skips its all-reduce except
the last one before the head (lloglin.models.ladder.layer_wirings keeps it): the same compute
with (almost) no communication, an upper bound for any overlap scheme.

Each configuration: caches of prompt_len + new_tokens positions (the first prompt_len treated as
a filled prompt), then `new_tokens` greedy steps in ONE jitted lax.fori_loop (no Python dispatch
per token), timed over --repeats runs after a compile/warm-up run; tokens/s = batch x new_tokens /
median seconds. Configurations run batch by batch, every mode of a batch in a row, so a run cut
short still has whole ratio rows. Every row carries `all_reduces` (the psums of the decode step in
the optimised HLO) and `all_reduces_overlapping_matmuls` (those with matmuls scheduled between
their start and done, or, for synchronous ones, independent of them); --hlo_dir writes each
program's optimised HLO. Results: one JSON line per configuration on stdout and appended to
--out; the table gives ladder / standard and nocomm / standard; --plot draws tokens/s vs batch.
"""

import argparse
import dataclasses
import json
import os
import time

SHAPES = {
    "tiny": dict(vocab_size=256, d_model=64, num_layers=4, num_heads=8, num_kv_heads=8,
                 head_dim=8, mlp_dim=128),
    "1b": dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               head_dim=64, mlp_dim=8192, tie_embeddings=True, rope_theta=500000.0),
    "8b": dict(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
               head_dim=128, mlp_dim=14336, tie_embeddings=False, rope_theta=500000.0),
}
MODES = ("standard", "ladder", "parallel", "nocomm")
# The latency-hiding scheduler overlaps async all-reduces with compute.
GPU_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="1b,8b", help=f"comma-separated, from {sorted(SHAPES)}")
  p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {list(MODES)}")
  p.add_argument("--batches", default="1,4,16,64")
  p.add_argument("--tp", type=int, default=0, help="tensor-parallel degree (0 = all devices)")
  p.add_argument("--prompt_len", type=int, default=1024)
  p.add_argument("--new_tokens", type=int, default=512)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--out", default="", help="append JSON lines here")
  p.add_argument("--hlo_dir", default="", help="write optimised HLO text here")
  p.add_argument("--plot", default="", help="PNG of tokens/s vs batch, one panel per model")
  p.add_argument("--from_jsonl", default="",
                 help="run nothing: read rows (JSON lines, as --out writes) for the table/plot")
  p.add_argument("--smoke", action="store_true",
                 help="CPU with 8 fake devices, the tiny shape, a few tokens (for tests)")
  args = p.parse_args(argv)
  for name, valid in (("models", SHAPES), ("modes", MODES)):
    unknown = sorted(set(getattr(args, name).split(",")) - set(valid))
    if unknown:
      p.error(f"--{name}: unknown {unknown}; choose from {sorted(valid)}")
  if args.smoke:
    args.models, args.prompt_len, args.new_tokens, args.repeats = "tiny", 8, 4, 1
    args.dtype = "float32"
    if args.batches == p.get_default("batches"):
      args.batches = "1,4"
  return args


def mode_config(base, mode: str):
  """The ModelConfig of a benchmark mode (see the module docstring for `nocomm`)."""
  if mode == "nocomm":
    return dataclasses.replace(base, residual_mode="desync", desync_every=base.num_layers + 1)
  return dataclasses.replace(base, residual_mode=mode)


def _set_xla_flags(smoke: bool):
  """Before jax is imported: fake CPU devices for --smoke, the latency-hiding scheduler on GPU."""
  flags = os.environ.get("XLA_FLAGS", "")
  if smoke:
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "xla_force_host_platform_device_count" not in flags:
      flags += " --xla_force_host_platform_device_count=8"
  else:
    flags += "".join(f" {f}" for f in GPU_FLAGS.split() if f.split("=")[0] not in flags)
  os.environ["XLA_FLAGS"] = flags.strip()


def main(argv=None):
  args = parse_args(argv)
  if args.from_jsonl:
    with open(args.from_jsonl) as f:
      results = [json.loads(line) for line in f if line.strip()]
  else:
    results = run(args)
  _print_table(results)
  if args.plot and results:
    plot(results, args.plot)
  return results


def run(args) -> list[dict]:
  _set_xla_flags(args.smoke)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from lloglin.models import ModelConfig
  from lloglin.models.decoder import DecoderLM
  from lloglin.inference import tp_decode
  from lloglin.parallel import hlo, mesh as mesh_lib

  tp = args.tp or jax.device_count()
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=tp))
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  print(f"# {device}, TP={tp}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}",
        flush=True)
  max_len = args.prompt_len + args.new_tokens
  results = []
  for name in args.models.split(","):
    base = ModelConfig(**SHAPES[name], max_seq_len=max_len, dtype=args.dtype,
                       param_dtype=args.dtype)
    _, state = tp_decode.init_sharded_params(base, mesh)
    cfgs, generates = {}, {}
    for mode in args.modes.split(","):
      cfgs[mode] = mode_config(base, mode)
      graphdef, _ = nnx.split(nnx.eval_shape(lambda c=cfgs[mode]: DecoderLM(c, rngs=nnx.Rngs(0))))
      generates[mode] = tp_decode.make_generate(graphdef, args.new_tokens)
    for batch in [int(b) for b in args.batches.split(",")]:
      tokens = jnp.ones((batch,), jnp.int32)
      pos = jnp.full((batch,), args.prompt_len, jnp.int32)
      for mode, generate in generates.items():
        caches = tp_decode.init_cache(cfgs[mode], batch, max_len, mesh=mesh)
        with jax.set_mesh(mesh):
          t0 = time.perf_counter()
          compiled = generate.lower(state, caches, tokens, pos).compile()
          compile_s = time.perf_counter() - t0
          times = []
          for _ in range(1 + args.repeats):  # the first run warms up (and is not counted)
            t0 = time.perf_counter()
            out, caches = compiled(state, caches, tokens, pos)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        del caches
        seconds = float(np.median(times[1:]))
        row = dict(model=name, mode=mode, batch=batch, tp=tp, device=device,
                   prompt_len=args.prompt_len, new_tokens=args.new_tokens, dtype=args.dtype,
                   tokens_per_s=batch * args.new_tokens / seconds,
                   ms_per_step=1e3 * seconds / args.new_tokens, compile_s=compile_s)
        text = compiled.as_text()
        reports = hlo.all_reduce_overlap(text, match="psum")
        row["all_reduces"] = len(reports)
        row["all_reduces_overlapping_matmuls"] = sum(
            (r.scheduled_between if r.scheduled_between is not None
             else r.independent_matmuls) > 0 for r in reports)
        if args.hlo_dir:
          os.makedirs(args.hlo_dir, exist_ok=True)
          with open(os.path.join(args.hlo_dir, f"{name}_{mode}_b{batch}.hlo"), "w") as f:
            f.write(text)
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    del state
  return results


def _ratio(tps, mode):
  return f"x{tps[mode] / tps['standard']:.3f}" if {mode, "standard"} <= set(tps) else ""


def _print_table(results):
  modes = list(dict.fromkeys(r["mode"] for r in results))
  print("\n| model | batch | " + " | ".join(f"{m} tok/s" for m in modes) +
        " | ladder / standard | nocomm / standard | ladder all-reduces overlapped |")
  print("|---|---|" + "---|" * (len(modes) + 3))
  for model in dict.fromkeys(r["model"] for r in results):
    for batch in sorted({r["batch"] for r in results if r["model"] == model}):
      rows = {r["mode"]: r for r in results if r["model"] == model and r["batch"] == batch}
      tps = {m: r["tokens_per_s"] for m, r in rows.items()}
      lad = rows.get("ladder")
      overlap = (f"{lad['all_reduces_overlapping_matmuls']} of {lad['all_reduces']}" if lad
                 else "")
      print(f"| {model} | {batch} | " + " | ".join(
          f"{tps[m]:.1f}" if m in tps else "-" for m in modes) +
            f" | {_ratio(tps, 'ladder')} | {_ratio(tps, 'nocomm')} | {overlap} |")


def plot(results, path: str):
  """tokens/s vs batch (log-log), one line per mode, one panel per model; of repeated
  configurations (runs appended to one file) the last row counts, as in the table."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = list(dict.fromkeys(r["model"] for r in results))
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
  for ax, model in zip(axes[0], models):
    rows = [r for r in results if r["model"] == model]
    for mode in [m for m in MODES if any(r["mode"] == m for r in rows)]:
      tps = {r["batch"]: r["tokens_per_s"] for r in rows if r["mode"] == mode}  # last row wins
      ax.plot(*zip(*sorted(tps.items())), marker="o", label=mode,  # one colour per mode
              color=f"C{MODES.index(mode)}", linestyle=":" if mode == "nocomm" else "-")
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tokens/s",
           title=f"{model}: prompt {rows[0]['prompt_len']}, {rows[0]['new_tokens']} new tokens")
    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches, labels=[str(b) for b in batches])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  r0 = results[0]
  fig.suptitle(f"lloglin tensor-parallel decode: {r0['device']}, TP={r0['tp']}, {r0['dtype']}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
