"""LoRA on the adapter machinery: a fresh adapter is the base model, merging keeps the function,
only the factors get optimizer state, stacked adapters run under vmap, save/load round-trips."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lloglin import optim
from lloglin.models import ModelConfig, build_model
from lloglin.training.step import make_program

TARGETS = r"(q_proj|v_proj|gate|up|down)/kernel$"


@pytest.fixture(scope="module")
def lm():
  cfg = ModelConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2, num_kv_heads=2,
                    head_dim=8, mlp_dim=24, max_seq_len=16)
  model = build_model(cfg, seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 16, (2, 8)), jnp.int32)
  logits = jax.jit(lambda p, t: nnx.merge(graphdef, p, rest)(t))
  return params, tokens, logits


def random_b(adapters, seed=1):
  """The adapters with b drawn at random (a trained adapter)."""
  keys = iter(jax.random.split(jax.random.key(seed), 16))
  return jax.tree.map(lambda x: optim.LoRA(x.a, 0.3 * jax.random.normal(next(keys), x.b.shape),
                                           x.scale), adapters, is_leaf=optim.is_lora)


def test_fresh_adapter_is_the_base_and_merging_keeps_the_function(lm):
  params, tokens, logits = lm
  specs = optim.lora_specs(params, rank=4, alpha=8.0, include=TARGETS)
  adapters = optim.init_lora(params, specs, seed=0)
  assert optim.lora.target_paths(adapters) == [
      "blocks/0/mixer/q_proj/kernel", "blocks/0/mixer/v_proj/kernel", "blocks/0/mlp/down/kernel",
      "blocks/0/mlp/gate/kernel", "blocks/0/mlp/up/kernel"]
  q = adapters["blocks"][0]["mixer"]["q_proj"]["kernel"].get_value()
  assert q.a.shape == (16, 4) and q.b.shape == (4, 16) and q.scale == 2.0
  assert float(jnp.abs(q.a).max()) <= 1 / 4  # U(±1/sqrt(m)), m = 16
  # B = 0: the effective parameters and the logits are the base model's, exactly.
  effective = optim.apply_adapters(params, adapters)
  chex_equal = lambda x, y: jax.tree.map(np.testing.assert_array_equal, x, y)
  chex_equal(effective, params)
  np.testing.assert_array_equal(logits(effective, tokens), logits(params, tokens))
  # A trained adapter: ΔW = (alpha / r) a b against a float64 formula, and the merged base with
  # the factors reset gives the same logits as the unmerged adapter.
  adapters = random_b(adapters)
  q = adapters["blocks"][0]["mixer"]["q_proj"]["kernel"].get_value()
  w0 = params["blocks"][0]["mixer"]["q_proj"]["kernel"].get_value()
  want = np.asarray(w0, np.float64) + 2.0 * np.asarray(q.a, np.float64) @ np.asarray(q.b,
                                                                                  np.float64)
  got = optim.apply_adapters(params, adapters)["blocks"][0]["mixer"]["q_proj"]["kernel"].get_value()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  unmerged = logits(optim.apply_adapters(params, adapters), tokens)
  assert float(jnp.abs(unmerged - logits(params, tokens)).max()) > 1e-3  # the adapter acts
  merged, reset = optim.merge_adapters(params, adapters)
  assert float(jnp.abs(reset["blocks"][0]["mixer"]["q_proj"]["kernel"].get_value().b).max()) == 0
  np.testing.assert_allclose(logits(optim.apply_adapters(merged, reset), tokens), unmerged,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits(merged, tokens), unmerged, rtol=1e-5, atol=1e-5)


def test_only_the_factors_are_trained_and_get_optimizer_state(lm):
  params, tokens, _ = lm
  model = build_model(ModelConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2,
                                  num_kv_heads=2, head_dim=8, mlp_dim=24, max_seq_len=16))
  cfg = ml_collections.ConfigDict(dict(
      name="lora", learning_rate=1e-2, warmup_steps=0, min_lr_ratio=1.0, b1=0.9, b2=0.99,
      eps=1e-8, weight_decay=0.01, grad_clip_norm=1.0, rank=2, lora_alpha=4.0,
      mask_regex=TARGETS, mask_exclude_regex=""))
  program = make_program(cfg, model, num_steps=3)
  state = program.state
  adapter_sizes = sorted(x.size for x in jax.tree.leaves(state["adapters"]))
  mu = state["opt_state"][1][0].mu  # clip, then adamw's scale_by_adam
  assert sorted(x.size for x in jax.tree.leaves(mu)) == adapter_sizes
  # rank 2 on q, v (16 -> 16), gate, up (16 -> 24) and down (24 -> 16)
  assert sum(adapter_sizes) == 2 * (2 * (16 + 16) + 3 * (16 + 24))
  frozen = jax.tree.map(np.asarray, state["params"])
  batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1),
           "segment_ids": jnp.ones_like(tokens), "positions": jnp.broadcast_to(
               jnp.arange(8, dtype=jnp.int32), tokens.shape),
           "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
  losses = []
  for _ in range(3):
    state, metrics = program.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, state["params"], frozen)  # the base is frozen
  assert losses[-1] < losses[0]
  b = state["adapters"]["blocks"][0]["mlp"]["up"]["kernel"].get_value().b
  assert float(jnp.abs(b).max()) > 0


def test_stacked_adapters_under_vmap_and_save_load(lm, tmp_path):
  params, tokens, logits = lm
  specs = optim.lora_specs(params, rank=2, alpha=2.0, include=r"v_proj/kernel$")
  one = [random_b(optim.init_lora(params, specs, seed=s), seed=s) for s in range(3)]
  stacked = optim.stack_adapters(one)
  both = jax.jit(jax.vmap(lambda a: logits(optim.apply_adapters(params, a), tokens)))(stacked)
  for i, adapters in enumerate(one):
    np.testing.assert_allclose(both[i], logits(optim.apply_adapters(params, adapters), tokens),
                               rtol=1e-5, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, optim.adapter_at(stacked, i), adapters)
  path = optim.save_adapters(str(tmp_path / "adapters"), stacked)
  loaded = optim.load_adapters(path, jax.eval_shape(lambda: stacked))
  jax.tree.map(np.testing.assert_array_equal, loaded, stacked)
  assert optim.lora.target_paths(loaded) == ["blocks/0/mixer/v_proj/kernel"]


def test_bad_specs_name_the_problem(lm):
  params = lm[0]
  with pytest.raises(ValueError, match=r"select no matrix parameter.*embed"):
    optim.lora_specs(params, rank=2, alpha=1.0, include="no_such_layer")
  with pytest.raises(ValueError, match=r"rank=0: expected a positive int"):
    optim.LoRASpec(0, 1.0)
  with pytest.raises(FileNotFoundError, match="no saved adapters"):
    optim.load_adapters("/nonexistent/adapters", {})
  with pytest.raises(ValueError, match="non-empty"):
    optim.stack_adapters([])
