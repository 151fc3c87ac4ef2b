"""Where a train step's memory goes: what one block saves for its backward pass, by the code that
made it, and what XLA's compiled programs of one block and of the whole step ask for.

  saved residuals   `jax.ad_checkpoint.saved_residuals` of one block's forward (abstract shapes,
                    no device memory): every array autodiff keeps for the backward pass, grouped
                    by the function that produced it (`file:function`; a jitted sequence op shows
                    as `jit:<name>` at its call site). The block's parameters are left out (they
                    are live anyway); its input x_BTD is one row. Under a `model.remat` policy this
                    is what survives the policy.
  compiled          `jax.jit(...).lower(...).compile().memory_analysis()` of one block's fwd+bwd
                    (input, cotangent and parameters as arguments) and of the whole train step:
                    argument, output, alias and temporary bytes, and the peak they add up to
                    (arguments + outputs - aliased + temporaries).

The block is that of a one-layer model with the benchmarked model's sizes, on the batch's shape.
The saved residuals are an upper bound on what a block holds between its forward and backward:
XLA shares equal arrays between layers and fuses some away. A ~350M Transformer at 2 x 16K on an
H100: 2.42 GiB per block, 58 GiB over 24 blocks, where the compiled step's whole peak was 36.2 GiB;
1 GiB of each block's list is the [B, 1, T, T] attention mask, the same array in every layer.
Compare policies and find the large items with them; read the compiled figures for totals.
"""

import collections
import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx
# The list behind the public jax.ad_checkpoint.print_saved_residuals (jax 0.11 does not export it).
from jax._src.ad_checkpoint import saved_residuals as _jax_saved_residuals

GIB = 2**30


def _nbytes(aval) -> int:
  return int(aval.size) * jnp.dtype(aval.dtype).itemsize


def _source(text: str) -> str:
  """'output of mul from /x/lloglin/layers/conv.py:25 (causal_conv)' -> 'conv.py:causal_conv';
  a jitted function's output -> 'jit:<name> at <file:function>'; a name tag keeps its name."""
  where = re.search(r"from (?:\S*/)?([^/\s]+\.py):\d+(?::\d+)? \(([^)]*)\)", text)
  place = f"{where.group(1)}:{where.group(2)}" if where else text
  jitted = re.match(r"output of jitted function '([^']+)'", text)
  if jitted:
    return f"jit:{jitted.group(1)} at {place}"
  named = re.match(r"named '([^']+)'", text)
  if named:
    return f"name:{named.group(1)} at {place}"
  return place


def _one_block(cfg, seq_len: int, batch: int):
  """(graphdef, params, rest, abstract x / segment ids / positions) of a one-layer model with
  cfg's sizes, built abstractly (no memory)."""
  from lloglin.models import build_model
  cfg1 = dataclasses.replace(cfg, num_layers=1, layer_pattern=cfg.mixers[0],
                             residual_start_layer=0)
  model = nnx.eval_shape(lambda: build_model(cfg1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.ShapeDtypeStruct((batch, seq_len, cfg.d_model), cfg.compute_dtype)
  ids = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
  return cfg1, graphdef, params, rest, x, ids


def _block_fn(cfg1, graphdef, rest, mixer_only: bool = False):
  """(params, x, segment ids, positions) -> the block's output; with mixer_only, the output of its
  mixer branch alone (norm and mixer, under the block's remat policy)."""
  from lloglin.models.decoder import run_blocks

  def block(params, x_BTD, segment_ids_BT, positions_BT):
    blocks = nnx.merge(graphdef, params, rest).blocks
    if mixer_only:
      return blocks[0].modules(segment_ids_BT=segment_ids_BT, positions_BT=positions_BT)[0](x_BTD)
    return run_blocks(cfg1, blocks, x_BTD, segment_ids_BT, positions_BT)
  return block


def saved_residuals(cfg, seq_len: int, batch: int, mixer_only: bool = False) -> dict:
  """One block's saved residuals (with mixer_only: its mixer branch's): {'total_gib',
  'input_gib', 'by_source': [(source, GiB, count, largest shape)] largest first}. The segment
  ids / positions (int32 [B, T]) count too."""
  cfg1, graphdef, params, rest, x, ids = _one_block(cfg, seq_len, batch)
  block = _block_fn(cfg1, graphdef, rest, mixer_only)
  res = _jax_saved_residuals(block, params, x, ids, ids)
  groups = collections.defaultdict(lambda: [0, 0, None, 0])
  input_bytes = 0
  for aval, text in res:
    if "from the argument params" in text or not hasattr(aval, "shape"):
      continue
    n = _nbytes(aval)
    if "from the argument x_BTD" in text:
      input_bytes += n
    g = groups["block input x_BTD" if "x_BTD" in text else _source(text)]
    g[0] += n
    g[1] += 1
    if n > g[3]:
      g[2], g[3] = f"{aval.dtype}{list(aval.shape)}", n
  by_source = sorted(((k, v[0] / GIB, v[1], v[2]) for k, v in groups.items()),
                     key=lambda r: -r[1])
  return dict(total_gib=sum(r[1] for r in by_source), input_gib=input_bytes / GIB,
              by_source=by_source)


def compiled_gib(compiled) -> dict:
  """GiB of a compiled program's memory_analysis (None where the backend gives none)."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  out = {k: getattr(m, f"{k}_size_in_bytes") / GIB
         for k in ("argument", "output", "alias", "temp")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def block_compiled(cfg, seq_len: int, batch: int) -> dict:
  """compiled_gib of one block's forward + backward (all gradients), on abstract inputs."""
  cfg1, graphdef, params, rest, x, ids = _one_block(cfg, seq_len, batch)
  block = _block_fn(cfg1, graphdef, rest)

  def fwd_bwd(params, x_BTD, segment_ids_BT, positions_BT, dy_BTD):
    y, vjp = jax.vjp(lambda p, v: block(p, v, segment_ids_BT, positions_BT), params, x_BTD)
    return vjp(dy_BTD.astype(y.dtype))

  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  return compiled_gib(jax.jit(fwd_bwd).lower(abstract, x, ids, ids, x).compile())


def print_block_report(arch: str, remat: str, cfg, seq_len: int, batch: int, res: dict,
                       mixer_res: dict, comp: dict | None, top: int = 12):
  print(f"## memory of one {arch} block (remat={remat}, B={batch}, T={seq_len}, "
        f"{cfg.num_layers} such blocks)")
  print(f"saved residuals {res['total_gib']:.3f} GiB per block (mixer branch "
        f"{mixer_res['total_gib']:.3f}, block input {res['input_gib']:.3f}); "
        f"x {cfg.num_layers} layers = {res['total_gib'] * cfg.num_layers:.2f} GiB")
  if comp is not None:
    print("compiled block fwd+bwd GiB: " + ", ".join(f"{k} {v:.3f}" for k, v in comp.items()))
  print("| saved by | GiB | arrays | largest |")
  print("| --- | --- | --- | --- |")
  for source, gib, count, largest in res["by_source"][:top]:
    print(f"| {source} | {gib:.3f} | {count} | {largest} |")
  rest = res["by_source"][top:]
  if rest:
    print(f"| ({len(rest)} more) | {sum(r[1] for r in rest):.3f} | "
          f"{sum(r[2] for r in rest)} | |")
