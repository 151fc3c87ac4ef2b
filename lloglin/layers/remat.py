"""Rematerialisation (activation checkpointing) of the decoder's residual branches.

`model.remat` names what the forward pass of each residual branch (a mixer with its norm, or the
MLP with its norm) keeps for the backward pass; the rest is recomputed there from the branch's
input, which is always kept. Values (`REMAT_POLICIES`):

  none                 no rematerialisation: autodiff keeps every residual it needs (fastest
                       backward, most memory).
  dots_saveable        jax.checkpoint_policies.dots_saveable: every matmul output is kept
                       (XLA-form attention scores and PaTH's per-level copies too); elementwise
                       work and the sequence kernels are recomputed.
  dots_and_kernels     matmuls without batch dimensions (the projections), each mixer's sequence
                       operator output (MIXER_CORE) and every output of a sequence kernel (Pallas
                       calls: GDN's per-chunk states, PaTH's log-sum-exp; cuDNN attention's
                       softmax statistics) are kept: only elementwise work (norms, gates, short
                       convs, activations) and XLA-side preprocessing (PaTH's copies) are
                       recomputed, no kernel forward is rerun. Log-linear GDN's kernel keeps
                       every level's state per chunk, too much at long T: use
                       dots_and_mixer_core there.
  dots_with_no_batch_dims_saveable
                       the jax policy of that name: projections kept, everything else recomputed.
  dots_and_mixer_core  projections and MIXER_CORE kept. A kernel whose backward needs only its
                       inputs (the Mamba-2 / log-linear Mamba-2 kernels) is not rerun; one that
                       saves outputs of its own (GDN's states, PaTH's and cuDNN's statistics) is.
  mixer_core           only MIXER_CORE kept: projections are recomputed too.
  block                nothing inside a branch is kept; the backward reruns the branch's forward,
                       the sequence kernels' included (least memory, about one more forward pass
                       of compute).

Which policy each model needs on an 80 GB card, and what each costs:
benchmarks/RESULTS.md#whole-model-training.

MIXER_CORE is a `jax.ad_checkpoint.checkpoint_name` tag, inert without a policy that names it.
"""

from collections.abc import Callable

import jax
from jax.ad_checkpoint import checkpoint_name

# The output of a mixer's sequence operator (attention, SSD, delta rule, PaTH), before output
# gating / projection.
MIXER_CORE = "mixer_core"
# Primitives whose outputs are a sequence kernel's: Pallas kernels and cuDNN fused attention.
KERNEL_PRIMITIVES = frozenset({"pallas_call", "dot_product_attention_fwd_wrapper"})


def _kernel_outputs(prim, *_, **__) -> bool:
  return prim.name in KERNEL_PRIMITIVES


_cp = jax.checkpoint_policies
_projections = _cp.dots_with_no_batch_dims_saveable
_core = _cp.save_only_these_names(MIXER_CORE)
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "dots_saveable": _cp.dots_saveable,
    "dots_and_kernels": _cp.save_from_both_policies(
        _cp.save_from_both_policies(_projections, _core), _kernel_outputs),
    "dots_with_no_batch_dims_saveable": _projections,
    "dots_and_mixer_core": _cp.save_from_both_policies(_projections, _core),
    "mixer_core": _core,
    "block": _cp.nothing_saveable,
}


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={remat!r}; expected one of {list(REMAT_POLICIES)}")


def tag_mixer_core(y):
  """Marks a mixer's sequence-operator output for the policies that keep MIXER_CORE."""
  return checkpoint_name(y, MIXER_CORE)


def rematerialised(fn: Callable, remat: str) -> Callable:
  """fn (a residual branch, x -> y) under the named policy; fn itself for 'none'."""
  check_remat(remat)
  if remat == "none":
    return fn
  return jax.checkpoint(fn, policy=REMAT_POLICIES[remat])
