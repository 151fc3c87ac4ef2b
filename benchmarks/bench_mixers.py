"""Sequence-mixer throughput on one GPU: lloglin's kernels, its XLA forms and the peers, one run.

  python -m benchmarks.bench_mixers                       # 16 heads x 128, T = 2K/8K/32K
  python -m benchmarks.bench_mixers --shape h48d64        # the log-linear paper's shape
  python -m benchmarks.bench_mixers --mixers path,attention --impls pallas,cudnn,fla
  python -m benchmarks.bench_mixers --memory path         # compiled fwd+bwd memory vs T
  python -m benchmarks.bench_mixers --mixers path --impls pallas,pallas_linear_memory
  python -m benchmarks.bench_mixers --merge a/rows_h16d128.jsonl b/rows_h16d128.jsonl
  python -m benchmarks.bench_mixers --impls pallas --mixers gdn --kernel_configs 32,8,2,16,8,1

Every call processes 65,536 tokens (B = 65536 / T), bf16 q/k/v, fp32 gates, lambda, PaTH's w and
beta (the shapes of the published peer figures). Rows, for each mixer and T, forward and
forward+backward (gradients of every input):
  pallas  lloglin's Pallas kernel (pallas_kernels), when the package provides it
  pallas_linear_memory
          PaTH's kernels with memory linear in T (path_attention_linear_memory; PaTH and PaTH-FoX
          only, not in the default --impls)
  pallas_triton
          GDN with every kernel on the Pallas-Triton lowering (KernelConfig(backend='triton');
          the default `pallas` row takes those of pallas_kernels.gdn.chunkwise.AUTO_MOSAIC on
          Mosaic GPU on a Hopper GPU; GDN only, not in the default --impls)
  pallas_mosaic
          every kernel that has a Mosaic GPU form on it (KernelConfig(backend='mosaic')): all of
          GDN's, Mamba-2 SSD's and log-linear Mamba-2's level scan, PaTH's three (PaTH and
          PaTH-FoX); log-linear GDN's levels above the chunk on GDN's kernels; opt-in
  pallas_level_scan
          log-linear GDN with its levels above the chunk on the level-stream scans (Triton;
          level_streams='scan'), the path the default `pallas` row (level_streams='gdn') replaces;
          opt-in
  xla     lloglin.ops' chunked / blockwise XLA form
  cudnn   jax.nn.dot_product_attention(implementation="cudnn", is_causal=True) (attention rows)
  fla     the flash-linear-attention peer (chunk_log_linear_attn, chunk_simple_gla,
          chunk_gated_delta_rule, parallel_path_attn) and torch SDPA, when fla/torch import
fla's gated backward refuses Hopper with triton < 3.7.1 (fla issue 640); the guard is lifted here
for timing only. On a fresh machine fla's Triton autotuning takes about a minute per operator and
shape: keep TRITON_CACHE_DIR between runs, or run one process per T under its own timeout and
--merge the row logs.

JAX rows are timed as the median over repeats of a jitted call loop closed by
block_until_ready; torch rows with triton.testing.do_bench (median). Throughput is million
tokens/s; the closing table gives each lloglin kernel's ratio to its fla peer and to cuDNN
attention timed in the same run. JSON and a PNG (fwd+bwd Mtok/s against T) go to --out, and
every row is appended to --out/rows_<shape>.jsonl as soon as it is timed.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable

# torch and jax share the GPU: jax grows its pool on demand and leaves room for torch.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.cli import int_tuples  # noqa: E402
from benchmarks.timing import median_seconds  # noqa: E402

TOKENS = 65536  # per call, as the published peer figures (--tokens for CPU smoke runs)
SHAPES = {"h16d128": (16, 128), "h48d64": (48, 64)}
MIXERS = ("attention", "mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path", "path_fox")
IMPLS = ("pallas", "xla", "cudnn", "fla")
OPT_IN_IMPLS = ("pallas_linear_memory", "pallas_triton", "pallas_mosaic",
                "pallas_level_scan")  # not in the default
# impls that set KernelConfig(backend=...), and the mixers with a kernel of that backend that
# the default `pallas` row does not already time
BACKEND_IMPLS = {"pallas_triton": ("gdn", "loglinear_gdn"),
                 "pallas_mosaic": ("gdn", "loglinear_gdn", "mamba2", "loglinear_mamba2", "path",
                                   "path_fox")}
# The peer each lloglin kernel is compared with (fla's operator of the same math).
PEER = {"mamba2": "fla_simple_gla", "loglinear_mamba2": "fla_log_linear_attn",
        "gdn": "fla_gated_delta_rule", "path": "fla_parallel_path_attn"}


@dataclasses.dataclass
class Row:
  mixer: str
  impl: str
  seq_len: int
  mode: str              # 'fwd' | 'fwdbwd'
  mtok_s: float | None   # None: failed (note says why)
  ms: float | None
  note: str = ""


def levels(seq_len: int) -> int:
  return math.ceil(math.log2(seq_len)) + 1


# ------------------------------------------------------------------------------------------------
# lloglin (JAX) cases: each returns (fn, args) with fn(*args) -> output array


def jax_inputs(tokens: int, seq_len: int, heads: int, dim: int, key) -> dict:
  B, T, H, K = tokens // seq_len, seq_len, heads, dim
  ks = jax.random.split(key, 8)
  bf16 = jnp.bfloat16

  def normal(k, *shape, dtype=bf16):
    return jax.random.normal(k, shape, jnp.float32).astype(dtype)

  def l2(x):
    x = x.astype(jnp.float32)
    return (x / jnp.linalg.norm(x, axis=-1, keepdims=True)).astype(bf16)

  q, k, v = normal(ks[0], B, T, H, K), normal(ks[1], B, T, H, K), normal(ks[2], B, T, H, K)
  return dict(
      q=q, k=k, v=v, qn=l2(q), kn=l2(k),
      g=jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H))),
      beta=jax.random.uniform(ks[4], (B, T, H)),
      lam=jax.random.uniform(ks[5], (B, T, H, levels(T))),
      w=l2(normal(ks[6], B, T, H, K)).astype(jnp.float32),
      beta2=2 * jax.random.uniform(ks[7], (B, T, H)),
      g_fox=jax.nn.log_sigmoid(4 + jax.random.normal(ks[3], (B, T, H))))


# mixers whose Pallas kernels take a KernelConfig (pallas_kernels.mamba2, .gdn, .path)
KERNEL_MIXERS = ("mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path", "path_fox")


def opt_in_serves(mixer: str, impl: str) -> bool:
  """False for an opt-in impl the mixer has no row of (linear memory: PaTH's; backends:
  BACKEND_IMPLS)."""
  if impl == "pallas_linear_memory":
    return mixer.startswith("path")
  if impl == "pallas_level_scan":
    return mixer == "loglinear_gdn"
  return mixer in BACKEND_IMPLS.get(impl, (mixer,))


def jax_case(mixer: str, impl: str, x: dict, segments: bool = False,
             kernel_config: tuple | None = None, interpret: bool | None = None
             ) -> tuple[Callable, tuple]:
  """The function and arguments of one lloglin row; ImportError when the kernel is absent.

  segments: pass segment_ids_BT (one document per row), as the trainer always does, so the
  packed-sequence path of each form is the one timed. kernel_config: (block_v, num_warps,
  num_stages) for the scan kernels, (block_size, num_warps, num_stages) for PaTH's (None: their
  defaults). interpret: run the Pallas kernels in interpret mode (None: off a GPU, for CPU smoke
  runs).
  """
  scale = x["q"].shape[-1] ** -0.5
  seg = {"segment_ids_BT": jnp.ones(x["q"].shape[:2], jnp.int32)} if segments else {}
  if mixer == "attention":
    if impl not in ("cudnn", "xla"):
      raise ImportError(f"attention has no {impl} row")
    return (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                         implementation=impl),
            (x["q"], x["k"], x["v"]))
  if not opt_in_serves(mixer, impl):
    raise ImportError(f"{mixer} has no {impl} row")
  if impl.startswith("pallas"):
    if mixer.startswith("path"):
      from pallas_kernels import path as mod
    elif mixer.endswith("gdn"):
      from pallas_kernels import gdn as mod
    else:
      from pallas_kernels import mamba2 as mod
  elif impl == "xla":
    from lloglin.ops import gdn, loglinear, mamba2, path
  else:
    raise ImportError(f"{mixer} has no {impl} row")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  if impl.startswith("pallas") and interpret:
    seg = {**seg, "interpret": True}
  if mixer.startswith("path") and (kernel_config is not None or impl in BACKEND_IMPLS):
    cfg = mod.KernelConfig()
    if kernel_config is not None:   # (block_size, warps, stages)
      seg = {**seg, "block_size": kernel_config[0]}
      cfg = mod.KernelConfig(*kernel_config[1:])
    if impl in BACKEND_IMPLS:
      cfg = cfg._replace(backend=impl.removeprefix("pallas_"))
    seg = {**seg, "config": cfg}
  elif impl in BACKEND_IMPLS:   # the launch default's block_v unless a config is swept
    from pallas_kernels import linear_recurrence as lr
    default = {"gdn": lr.GDN_CONFIG, "loglinear_gdn": lr.GDN_CONFIG, "mamba2": lr.SSD_CONFIG,
               "loglinear_mamba2": lr.LOGLINEAR_SSD_CONFIG}[mixer]
    B, _, H, V = x["v"].shape
    cfg = lr.launch_config(None, default, B * H, V) if kernel_config is None else (
        mod.KernelConfig(*kernel_config))
    seg = {**seg, "config": cfg._replace(backend=impl.removeprefix("pallas_"))}
  elif kernel_config is not None:
    seg = {**seg, "config": mod.KernelConfig(*kernel_config)}
  if impl == "pallas_level_scan":
    seg = {**seg, "level_streams": "scan"}

  if mixer in ("mamba2", "loglinear_mamba2"):
    name = "ssd_chunked" if mixer == "mamba2" else "loglinear_ssd_chunked"
    op = getattr(mod if impl.startswith("pallas") else (
        mamba2 if mixer == "mamba2" else loglinear), name)
    args = (x["q"], x["k"], x["v"], x["g"]) + (() if mixer == "mamba2" else (x["lam"],))
    return (lambda *a: op(*a, chunk_size=64, scale=scale, **seg)), args
  if mixer in ("gdn", "loglinear_gdn"):
    name = "gdn_chunked" if mixer == "gdn" else "loglinear_gdn_chunked"
    op = getattr(mod if impl.startswith("pallas") else (gdn if mixer == "gdn" else loglinear),
                 name)
    args = (x["qn"], x["kn"], x["v"], x["g"], x["beta"]) + (
        () if mixer == "gdn" else (x["lam"],))
    return (lambda *a: op(*a, chunk_size=64, scale=scale, **seg)), args
  if mixer in ("path", "path_fox"):
    op = (path.path_blockwise if impl == "xla" else mod.path_attention_linear_memory
          if impl == "pallas_linear_memory" else mod.path_attention)
    gate = {"g_BTH": x["g_fox"]} if mixer == "path_fox" else {}
    return (lambda q, k, v, w, b: op(q, k, v, w, b, scale=scale, **gate, **seg),
            (x["q"], x["k"], x["v"], x["w"], x["beta2"]))
  raise ValueError(f"unknown mixer {mixer!r}; known: {MIXERS}")


def fwd_bwd(fn: Callable) -> Callable:
  """Forward and the gradients of every input for a fixed random cotangent."""

  def run(args, do):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(do)
  return run


def time_jax(fn: Callable, args, *, backward: bool, repeats: int = 5, budget_s: float = 0.5):
  """Median seconds per call (a timed loop of calls closed by one block_until_ready)."""
  if backward:
    out_shape = jax.eval_shape(fn, *args)
    do = jax.random.normal(jax.random.key(1), out_shape.shape, jnp.float32).astype(
        out_shape.dtype)
    step = jax.jit(fwd_bwd(fn))
    call = lambda: step(args, do)  # noqa: E731
  else:
    step = jax.jit(fn)
    call = lambda: step(*args)  # noqa: E731
  jax.block_until_ready(call())                       # compile
  t0 = time.perf_counter()
  jax.block_until_ready(call())
  once = time.perf_counter() - t0
  return median_seconds(call, calls=max(2, min(100, int(budget_s / max(once, 1e-6)))),
                        repeats=repeats)


def compiled_bytes(fn: Callable, args, *, backward: bool) -> int:
  """Arguments + outputs + temporaries of the compiled program (XLA's memory analysis)."""
  if backward:
    out_shape = jax.eval_shape(fn, *args)
    do = jax.ShapeDtypeStruct(out_shape.shape, out_shape.dtype)
    lowered = jax.jit(fwd_bwd(fn)).lower(args, do)
  else:
    lowered = jax.jit(fn).lower(*args)
  m = lowered.compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


# ------------------------------------------------------------------------------------------------
# Peers (PyTorch): fla and SDPA


def torch_cases(tokens: int, seq_len: int, heads: int, dim: int, mixers) -> dict:
  """name -> (lloglin mixer it stands beside, fn, inputs needing grads); {} without torch/fla."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return {}
  B, T, H, D = tokens // seq_len, seq_len, heads, dim
  dev, dt = "cuda", torch.bfloat16

  def mk(*shape, dtype=dt):
    return torch.randn(*shape, device=dev, dtype=dtype).requires_grad_(True)

  def leaf(x):
    return x.detach().requires_grad_(True)

  q, k, v = mk(B, T, H, D), mk(B, T, H, D), mk(B, T, H, D)
  qn, kn = leaf(F.normalize(q.float(), dim=-1).to(dt)), leaf(F.normalize(k.float(), dim=-1).to(dt))
  g = leaf(F.logsigmoid(torch.randn(B, T, H, device=dev)))
  beta = leaf(torch.rand(B, T, H, device=dev, dtype=dt))
  lam = leaf(torch.rand(B, T, H, levels(T), device=dev, dtype=dt))
  w = leaf(F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1))
  beta2 = leaf(2 * torch.rand(B, T, H, device=dev))
  cases = {"torch_sdpa": ("attention", lambda: F.scaled_dot_product_attention(
      q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True), [q, k, v])}
  try:
    import fla.ops.common.chunk_o as chunk_o
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.log_linear_attn import chunk_log_linear_attn
    from fla.ops.path_attn import parallel_path_attn
    from fla.ops.simple_gla import chunk_simple_gla
  except ImportError as e:
    print(f"fla not importable ({e}); fla rows skipped", flush=True)
  else:
    chunk_o.TRITON_ABOVE_3_7_1 = True  # timing only: see the module docstring
    s = D ** -0.5
    cases.update({
        "fla_simple_gla": ("mamba2", lambda: chunk_simple_gla(q, k, v, g=g, scale=s), [q, k, v, g]),
        "fla_log_linear_attn": ("loglinear_mamba2",
                                lambda: chunk_log_linear_attn(q, k, v, g, lam, scale=s),
                                [q, k, v, g, lam]),
        "fla_gated_delta_rule": ("gdn", lambda: chunk_gated_delta_rule(
            qn, kn, v, g=g, beta=beta, scale=s), [qn, kn, v, g, beta]),
        "fla_parallel_path_attn": ("path", lambda: parallel_path_attn(q, k, v, w, beta2, scale=s),
                                   [q, k, v, w, beta2]),
    })
  return {name: case for name, case in cases.items() if case[0] in mixers}


def time_torch(fn, inputs, *, backward: bool) -> float:
  import torch
  import triton
  if not backward:
    with torch.no_grad():
      return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3
  out = fn()
  do = torch.randn_like(out[0] if isinstance(out, tuple) else out)

  def fb():
    for t in inputs:
      t.grad = None
    r = fn()
    (r[0] if isinstance(r, tuple) else r).backward(do)
  return triton.testing.do_bench(fb, warmup=25, rep=200, return_mode="median") / 1e3


# ------------------------------------------------------------------------------------------------


def measure(label: str, tokens: int, seq_len: int, mode: str, timer: Callable[[], float],
            mixer: str, impl: str, log_path: str = "") -> Row:
  """Times one row; appends it to log_path (JSON lines) at once, so that a run cut short by a
  timeout keeps every row it finished (--merge reads them back)."""
  try:
    s = timer()
    row = Row(mixer, impl, seq_len, mode, tokens / s / 1e6, s * 1e3)
  except ImportError as e:
    row = Row(mixer, impl, seq_len, mode, None, None, f"absent: {e}")
  except Exception as e:  # one failing row (OOM, lowering error) must not hide the others
    row = Row(mixer, impl, seq_len, mode, None, None, f"{type(e).__name__}: {str(e)[:200]}")
  shown = f"{row.mtok_s:10.3f} Mtok/s {row.ms:9.3f} ms" if row.mtok_s else f"FAIL {row.note}"
  print(f"ROW {label:<34} T={seq_len:<6} {mode:<7} {shown}", flush=True)
  if log_path:
    with open(log_path, "a") as f:
      f.write(json.dumps(dataclasses.asdict(row)) + "\n")
  return row


def skipped(label: str, mode: str, skip: list[str]) -> bool:
  """--skip entries are row labels (fla_log_linear_attn) or label:mode (…:fwdbwd)."""
  return label in skip or f"{label}:{mode}" in skip


def run_throughput(args) -> list[Row]:
  heads, dim = SHAPES[args.shape]
  log_path = os.path.join(args.out, f"rows_{args.shape}.jsonl")
  rows = []
  for T in args.seqlens:
    if "fla" in args.impls:
      for name, (mixer, fn, ins) in torch_cases(args.tokens, T, heads, dim, args.mixers).items():
        for mode in args.modes:
          if skipped(name, mode, args.skip):
            continue
          rows.append(measure(name, args.tokens, T, mode, lambda: time_torch(fn, ins,
                                                                backward=mode == "fwdbwd"),
                              mixer, "fla" if name.startswith("fla") else "torch_sdpa",
                              log_path))
      _free_torch()
    x = jax_inputs(args.tokens, T, heads, dim, jax.random.key(T))
    for mixer in args.mixers:
      for impl in args.impls:
        if impl == "fla" or (impl == "cudnn") != (mixer == "attention") or (
            not opt_in_serves(mixer, impl)):
          continue
        sweep = args.kernel_configs if impl.startswith("pallas") and mixer in KERNEL_MIXERS else []
        for cfg in sweep or [None]:
          for mode in args.modes:
            def timer(mixer=mixer, impl=impl, mode=mode, x=x, cfg=cfg):
              fn, fargs = jax_case(mixer, impl, x, args.segments, cfg)
              return time_jax(fn, fargs, backward=mode == "fwdbwd", repeats=args.repeats)
            tile = "bs" if mixer.startswith("path") else "bv"  # PaTH's block size, scans' block_v
            label = (impl + (f"_{tile}{cfg[0]}w{cfg[1]}s{cfg[2]}" if cfg else "")
                     + ("_segments" if args.segments else ""))
            if skipped(f"lloglin_{mixer}[{label}]", mode, args.skip):
              continue
            rows.append(measure(f"lloglin_{mixer}[{label}]", args.tokens, T, mode, timer, mixer,
                                label, log_path))
    del x
  return rows


def _free_torch():
  try:
    import torch
    torch.cuda.empty_cache()
  except ImportError:
    pass


def throughput_table(rows: list[Row]) -> list[str]:
  """Markdown: one line per implementation, Mtok/s for each T and mode."""
  cols = sorted({(r.seq_len, r.mode) for r in rows}, key=lambda c: (c[0], c[1] != "fwd"))
  cells = {}
  for r in rows:
    cells.setdefault((r.mixer, r.impl), {})[(r.seq_len, r.mode)] = (
        f"{r.mtok_s:.3g}" if r.mtok_s else "fail")
  lines = ["| mixer | impl | " + " | ".join(f"T={T} {m}" for T, m in cols) + " |",
           "|" + " --- |" * (2 + len(cols))]
  for (mixer, impl), got in cells.items():
    lines.append(f"| {mixer} | {impl} | " + " | ".join(got.get(c, "-") for c in cols) + " |")
  return lines


def ratio_table(rows: list[Row]) -> list[str]:
  """Markdown: each lloglin Pallas row against its fla peer and cuDNN attention."""
  by = {(r.mixer, r.impl, r.seq_len, r.mode): r.mtok_s for r in rows if r.mtok_s}
  fla = {(r.mixer, r.seq_len, r.mode): r.mtok_s for r in rows if r.impl == "fla" and r.mtok_s}
  lines = ["| mixer | T | mode | lloglin Pallas (impl) Mtok/s | XLA form | fla peer "
           "| cuDNN attention | x fla | x cuDNN | x XLA |", "|" + " --- |" * 10]
  for (mixer, impl, T, mode), v in sorted(by.items()):
    if not impl.startswith("pallas"):
      continue
    peer, cudnn = fla.get((mixer, T, mode)), by.get(("attention", "cudnn", T, mode))
    xla = by.get((mixer, "xla" + ("_segments" if impl.endswith("_segments") else ""), T, mode))
    fmt = lambda a: f"{a:.3g}" if a else "-"  # noqa: E731
    div = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
    lines.append(f"| {mixer} | {T} | {mode} | {fmt(v)} ({impl}) | {fmt(xla)} | {fmt(peer)} "
                 f"| {fmt(cudnn)} | {div(v, peer)} | {div(v, cudnn)} | {div(v, xla)} |")
  return lines


def plot(rows: list[Row], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  series = {}
  for r in rows:   # a later row of the same implementation and T replaces an earlier one
    if r.mode == "fwdbwd" and r.mtok_s:
      series.setdefault(f"{r.mixer} [{r.impl}]", {})[r.seq_len] = r.mtok_s
  for label, by_T in sorted(series.items()):
    pts = sorted(by_T.items())
    ax.plot(*zip(*pts), marker="o", label=label, linestyle="-" if "[pallas" in label else "--")
  ax.set(xscale="log", yscale="log", xlabel="sequence length T (65,536 tokens per call)",
         ylabel="forward+backward, million tokens/s", title=title)
  if series:
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def run_memory(args) -> list[dict]:
  """Compiled fwd+bwd bytes at batch 1 for each mixer/impl and T (linear-in-T check)."""
  heads, dim = SHAPES[args.shape]
  out = []
  for T in args.memory_seqlens:
    x = jax_inputs(T, T, heads, dim, jax.random.key(0))  # batch 1
    for mixer in args.memory:
      for impl in [i for i in args.impls if i in ("pallas", "xla", "cudnn") + OPT_IN_IMPLS]:
        try:
          fn, fargs = jax_case(mixer, impl, x)
          gib = compiled_bytes(fn, fargs, backward=True) / 2**30
          note = ""
        except Exception as e:
          gib, note = None, f"{type(e).__name__}: {str(e)[:160]}"
        out.append(dict(mixer=mixer, impl=impl, seq_len=T, fwdbwd_gib=gib, note=note))
        print(f"MEM {mixer}[{impl}] T={T}: " + (f"{gib:.3f} GiB" if gib else note), flush=True)
  return out


def merged_rows(paths: list[str]) -> list[Row]:
  """Rows of earlier runs' JSON-lines logs, in file order."""
  rows = []
  for path in paths:
    with open(path) as f:
      rows += [Row(**json.loads(line)) for line in f if line.strip()]
  return rows


def versions() -> dict:
  import importlib
  found = {}
  for name in ("jax", "jaxlib", "flax", "triton", "torch", "fla"):
    try:
      found[name] = getattr(importlib.import_module(name), "__version__", "?")
    except ImportError:
      found[name] = None
  found["device"] = str(jax.devices()[0].device_kind)
  return found


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
  p.add_argument("--shape", default="h16d128", choices=sorted(SHAPES))
  p.add_argument("--tokens", type=int, default=TOKENS)
  p.add_argument("--seqlens", type=lambda s: [int(x) for x in csv(s)], default=[2048, 8192, 32768])
  p.add_argument("--mixers", type=csv, default=list(MIXERS))
  p.add_argument("--impls", type=csv, default=list(IMPLS))
  p.add_argument("--modes", type=csv, default=["fwd", "fwdbwd"])
  p.add_argument("--repeats", type=int, default=5,
                 help="timed loops per JAX row, the median taken (1 for CPU smoke runs)")
  p.add_argument("--segments", action="store_true",
                 help="lloglin rows get segment_ids_BT (one document per row), as in training")
  p.add_argument("--kernel_configs", default=[],
                 type=int_tuples(("block_v", "num_warps", "num_stages")),
                 help="launch configurations to time the Pallas rows with, as flat "
                      "block_v,num_warps,num_stages triples for the scan mixers and "
                      "block_size,num_warps,num_stages for PaTH (default: their defaults)")
  p.add_argument("--memory", type=csv, default=[], help="mixers for the memory-vs-T section")
  p.add_argument("--memory_seqlens", type=lambda s: [int(x) for x in csv(s)],
                 default=[8192, 32768, 131072])
  p.add_argument("--skip", type=csv, default=[],
                 help="rows not timed: labels as printed (fla_log_linear_attn, "
                      "lloglin_path[xla]), optionally :fwd or :fwdbwd")
  p.add_argument("--merge", nargs="+", default=[], metavar="JSONL",
                 help="no timing: tables and plot from the rows_*.jsonl of earlier runs "
                      "(e.g. one process per T, each under its own timeout)")
  p.add_argument("--title", default="",
                 help="plot title (default: this device, the shape, bf16; set it with --merge, "
                      "which runs where the rows were not timed)")
  p.add_argument("--out", default=os.environ.get("OUT", "bench_mixers_out"))
  args = p.parse_args(argv)
  for name, given, known in (("--mixers", args.mixers + args.memory, MIXERS),
                             ("--impls", args.impls, IMPLS + OPT_IN_IMPLS), ("--modes", args.modes,
                                                              ("fwd", "fwdbwd"))):
    bad = sorted(set(given) - set(known))
    if bad:
      p.error(f"{name}: unknown {bad}; choose from {list(known)}")
  if args.repeats < 1:
    p.error(f"--repeats={args.repeats}: expected at least 1")
  for T in args.seqlens:
    if args.tokens % T:
      p.error(f"--seqlens: {T} does not divide --tokens={args.tokens}")
  return args


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  meta = dict(date=time.strftime("%Y-%m-%d"), shape=args.shape, tokens_per_call=args.tokens,
              versions=versions(), command=" ".join(sys.argv))
  print(json.dumps(meta), flush=True)
  result = dict(meta=meta)
  if args.merge or (args.seqlens and args.mixers):
    rows = merged_rows(args.merge) if args.merge else run_throughput(args)
    result["rows"] = [dataclasses.asdict(r) for r in rows]
    table = throughput_table(rows) + [""] + ratio_table(rows)
    result["tables"] = table
    if any(r.mtok_s for r in rows):
      plot(rows, os.path.join(args.out, f"bench_mixers_{args.shape}.png"),
           args.title or f"{meta['versions']['device']}, {args.shape}, bf16")
    print("\n".join(table))
  if args.memory:
    result["memory"] = run_memory(args)
  with open(os.path.join(args.out, f"bench_mixers_{args.shape}.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
