"""Residual wiring of a block stack: standard, ladder, parallel (PaLM) and desync.

The decoder is a sequence of modules h_1, h_2, ... (mixer and MLP alternate, each counted
separately). Under tensor parallelism each module's output is a partial sum that needs an
all-reduce R (a psum over `tensor`; the identity on one device):

  standard  x_i = x_{i-1} + R(h_i(x_{i-1}))            h_{i+1} waits for R(h_i)
  ladder    x_i = x_{i-1} + R(h_i(x_{i-2}))            Ladder Residual (arXiv 2501.06589)
  parallel  x_l = x_{l-1} + R(attn_l(x_{l-1}) + mlp_l(x_{l-1}))   per layer l, one R per layer
  desync    like standard, but a module whose all-reduce is skipped adds its *local* partial
            output to this device's own copy of the residual; a module that keeps it computes
            x = R(h(x_r) + x_r / tp), which re-synchronises the copies (as gpt_desync_TP does).

Ladder: module i reads the residual stream one module stale, so R(h_i) can run while h_{i+1}
computes. Execution order (the official gpt-fast code; here data flow, which XLA schedules):
the carry between layers is (residual, pending mixer output, pending MLP output); before each
module the older pending output is added to the residual, the newer (the previous module's,
whose all-reduce is still in flight) is not; after the last layer both pending outputs are
added (the flush) before the final norm. Layers below `residual_start_layer` stay standard
(hybrid models: the paper's adaptation of a trained model converts only the upper layers); the
first ladder module reads the complete stream, since nothing is in flight before it.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax

RESIDUAL_MODES = ("standard", "ladder", "parallel", "desync")
DESYNC_REDUCE = ("mlp", "mixer", "both")


@dataclasses.dataclass(frozen=True)
class Wiring:
  """How one layer joins the residual stream; `syncs[j]`: module j keeps its all-reduce
  (only meaningful for desync; the other modes all-reduce every module)."""
  mode: str
  syncs: tuple[bool, ...] = (True, True)


def check_residual_options(mode: str, start_layer: int, desync_every: int, desync_reduce: str,
                           num_layers: int):
  if mode not in RESIDUAL_MODES:
    raise ValueError(f"model.residual_mode={mode!r}; expected one of {list(RESIDUAL_MODES)}")
  if not 0 <= start_layer <= num_layers:
    raise ValueError(f"model.residual_start_layer={start_layer}; expected 0..num_layers "
                     f"({num_layers})")
  if desync_every < 1:
    raise ValueError(f"model.desync_every={desync_every}; expected a positive layer count")
  if desync_reduce not in DESYNC_REDUCE:
    raise ValueError(f"model.desync_reduce={desync_reduce!r}; expected one of "
                     f"{list(DESYNC_REDUCE)}")


def layer_wirings(mode: str, num_layers: int, *, start_layer: int = 0, desync_every: int = 1,
                  desync_reduce: str = "mlp") -> tuple[Wiring, ...]:
  """The wiring of every layer. Desync: layers (i+1) % desync_every == 0 keep the all-reduce of
  `desync_reduce`; the last module of the last layer always keeps it (the head needs one
  residual stream)."""
  check_residual_options(mode, start_layer, desync_every, desync_reduce, num_layers)
  out = []
  for i in range(num_layers):
    if i < start_layer or mode != "desync":
      out.append(Wiring("standard" if i < start_layer else mode))
      continue
    on = (i + 1) % desync_every == 0
    syncs = (on and desync_reduce in ("mixer", "both"), on and desync_reduce in ("mlp", "both"))
    if i == num_layers - 1:
      syncs = (syncs[0], True)
    out.append(Wiring("desync", syncs))
  return tuple(out)


def config_wirings(cfg) -> tuple[Wiring, ...]:
  """`layer_wirings` from a ModelConfig's residual options."""
  return layer_wirings(cfg.residual_mode, cfg.num_layers, start_layer=cfg.residual_start_layer,
                       desync_every=cfg.desync_every, desync_reduce=cfg.desync_reduce)


def residual_stack(x, layers: Sequence[tuple[Wiring, Sequence[Callable]]], *,
                   reduce: Callable = lambda y: y, tp: int = 1, probe=None):
  """Runs the layers on the residual stream `x` and returns the stream after the last one.

  `layers`: (wiring, modules) per layer, where modules are the layer's functions x -> partial
  output (norm included): (mixer,) or (mixer, mlp). `reduce` completes a partial output (psum
  over `tensor`, identity on one device); `tp` is the number of partial outputs it sums.

  `probe` (one device only; None traces nothing extra): `probe.stream(i, s)` sees the complete
  stream s entering layer i (i = len(layers): after the last layer) and returns None or a delta
  that is added to the stream there; `probe.branch(i, j, y)` sees the output of module j of
  layer i (lloglin.models.decoder.Probe records and steers through these).
  """
  older = newer = None  # ladder: pending (already all-reduced) outputs not yet in x

  def flush(x):
    for y in (older, newer):
      if y is not None:
        x = x + y
    return x

  def at_stream(i, x):
    delta = probe.stream(i, flush(x))  # ladder: the stream with its pending outputs
    return x if delta is None else x + delta

  def call(i, j, h, x):
    y = h(x)
    if probe is not None:
      probe.branch(i, j, y)
    return y

  for i, (wiring, modules) in enumerate(layers):
    if wiring.mode != "ladder":
      x, older, newer = flush(x), None, None
    if probe is not None:
      x = at_stream(i, x)
    if wiring.mode == "standard":
      for j, h in enumerate(modules):
        x = x + reduce(call(i, j, h, x))
    elif wiring.mode == "parallel":
      ys = [call(i, j, h, x) for j, h in enumerate(modules)]
      x = x + reduce(sum(ys[1:], ys[0]))
    elif wiring.mode == "desync":
      if len(modules) == 1:  # mixer-only layer: its one module syncs if either flag asks
        wiring = Wiring("desync", (any(wiring.syncs),))
      for j, (h, sync) in enumerate(zip(modules, wiring.syncs)):
        y = call(i, j, h, x)
        x = reduce(y + x / tp) if sync else x + y
    elif wiring.mode == "ladder":
      for j, h in enumerate(modules):
        if older is not None:
          x = x + older
        y = call(i, j, h, x)
        if tp > 1 and newer is not None:
          # Chains this all-reduce after the previous one (like in-order async handles), so XLA
          # never combines the two into one all-reduce that waits for both modules (the CPU
          # compiler does without this). The module's compute stays independent of the one in
          # flight. (A barrier on the module's input as well made the H200 overlap worse.)
          y, _ = jax.lax.optimization_barrier((y, newer))
        older, newer = newer, reduce(y)
    else:
      raise ValueError(f"residual mode {wiring.mode!r}; expected one of {list(RESIDUAL_MODES)}")
  x, older, newer = flush(x), None, None
  return x if probe is None else at_stream(len(layers), x)
