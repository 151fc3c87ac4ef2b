"""make_optimizer / make_adapter_setup from an `optim` config, on an NNX model's parameters."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lloglin import optim
from tests.optim import helpers

VOCAB, D, F = 16, 8, 12


def config(name="adamw", **overrides):
  """The base config's optim section (configs/base.py) plus overrides."""
  fields = dict(name=name, learning_rate=1e-2, warmup_steps=2, min_lr_ratio=0.1, b1=0.9,
                b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, rank=2,
                refresh_every=5)
  fields.update(overrides)
  return types.SimpleNamespace(**fields)


class _TinyLM(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.attn = nnx.Linear(D, D, rngs=rngs)
    self.up = nnx.Linear(D, F, rngs=rngs)
    self.down = nnx.Linear(F, D, rngs=rngs)
    self.norm = nnx.RMSNorm(D, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.attn(x)
    x = x + self.down(jax.nn.gelu(self.up(x)))
    return self.embed.attend(self.norm(x))


def _lm():
  model = _TinyLM(nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, size=(8, 6)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, tokens):
    logits = nnx.merge(graphdef, params, rest)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return params, loss, tokens


def _train(tx, params, loss, tokens, steps):

  @jax.jit
  def run(params):

    def body(carry, _):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params, tokens)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), value

    (params, state), values = jax.lax.scan(body, (params, tx.init(params)), length=steps)
    return params, state, values

  return run(params)


@pytest.mark.parametrize("name", optim.NAMES)
def test_each_name_trains_and_reports_its_state(name):
  params, loss, tokens = _lm()
  tx, info = optim.make_optimizer(config(name), params, num_steps=30)
  _, state, values = _train(tx, params, loss, tokens, 30)
  assert float(values[-1]) < 0.8 * float(values[0])
  groups = optim.optimizer_state_bytes(state, params)
  kernels = 4 * (D * D + D * F + F * D)
  if name == "adamw":
    assert info.projected == () and groups["state_full"] == 2 * groups["params"]
  else:
    assert info.projected == ("attn/kernel", "down/kernel", "up/kernel")
    low = {"galore": 2 * (D + D + D), "random_sketch": 2 * (D + D + D),
           "kronecker": 3 * 2 * 2}[name]  # auto: (2, 8) (8, 2) (2, 8); two-sided: (2, 2)
    assert groups["state_low_rank"] == 2 * 4 * low
    assert groups["state_full"] == 2 * (groups["params"] - kernels)
    assert groups["projections"] > 0
  assert name in info.summary and "state/params" in optim.format_state_bytes(groups)


def test_schedule_and_weight_decay_mask():
  cfg = optim.factory.read_config(config(warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1))
  schedule = optim.make_schedule(cfg, 100)
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(100)) == pytest.approx(0.1)
  short = optim.make_schedule(cfg, 5)  # warmup shortened to fit, as the trainer's schedule
  assert float(short(4)) == pytest.approx(1.0)
  params, _, _ = _lm()

  def mask_of(**overrides):
    fn = optim.factory.decay_mask(optim.factory.read_config(config(**overrides)))
    flat = jax.tree_util.tree_flatten_with_path(fn(params))[0]
    return {optim.path_str(path): flag for path, flag in flat}
  assert optim.factory.decay_mask(cfg) is None  # the default decays everything, as optax.adamw
  assert mask_of(decay_matrices_only=True) == {
      "attn/bias": False, "attn/kernel": True, "down/bias": False, "down/kernel": True,
      "embed/embedding": True, "norm/scale": False, "up/bias": False, "up/kernel": True}
  excluded = mask_of(no_decay_regex=r"(^|/)(embed|norm)/")
  assert [p for p, flag in excluded.items() if not flag] == ["embed/embedding", "norm/scale"]


def test_no_decay_regex_leaves_matching_parameters_alone():
  # Zero gradients: only weight decay moves parameters, and only those not excluded.
  params = {"mixer": {"A_log": jnp.ones((4,)), "kernel": jnp.ones((4, 4))}}
  tx, _ = optim.make_optimizer(config(weight_decay=0.5, no_decay_regex=r"(^|/)A_log$",
                                      warmup_steps=0), params, num_steps=10)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):
    updates, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["mixer"]["A_log"], 1.0)
  assert float(params["mixer"]["kernel"][0, 0]) < 1.0


def test_accumulation_equals_the_whole_batch_step():
  # k microbatch calls = one step on their mean gradient, weight decay and schedule included.
  k, steps = 2, 12
  with jax.enable_x64(True):
    params, data = helpers.mlp_params(), helpers.batches(steps)
    micro = jax.tree.map(lambda x: x.reshape(steps * k, x.shape[1] // k, x.shape[2]), data)
    cfg = dict(mask_regex="w$", projection="orthogonal", grad_clip_norm=0.0, refresh_every=4)
    whole, _ = optim.make_optimizer(config("random_sketch", **cfg), params, num_steps=steps)
    accumulated, info = optim.make_optimizer(
        config("random_sketch", accumulate_steps=k, **cfg), params, num_steps=steps)
    assert info.accumulate_steps == k
    expected, _ = helpers.run_projected(whole, params, data)
    got, _ = helpers.run_projected(accumulated, params, micro)
    assert helpers.max_abs_diff(jax.tree.map(lambda x: x[k - 1::k], got), expected) < 1e-10


@pytest.mark.parametrize("name,policy,k", [("onesided_lora", "keep", 1),
                                          ("kronecker_lora", "reset", 2)])
def test_adapter_setup_trains(name, policy, k):
  params, loss, tokens = _lm()
  setup = optim.make_adapter_setup(config(name, learning_rate=3e-2, refresh_every=3,
                                          refresh_policy=policy, accumulate_steps=k),
                                   params, num_steps=12)
  assert setup.needs_gradient  # the default projection is svd
  adapter_loss = optim.loss_on_adapters(loss)
  full_grad = jax.jit(jax.grad(adapter_loss, argnums=1))
  # The step may be traced: one compilation serves every refresh.
  refresh = jax.jit(lambda f, a, p, s, step, g: setup.refresh(f, a, p, s, step=step, grads=g))

  @jax.jit
  def step(adapters, frozen, projections, opt_state):
    value, grads = jax.value_and_grad(adapter_loss)(adapters, frozen, projections, tokens)
    updates, opt_state = setup.tx.update(grads, opt_state, adapters)
    return optax.apply_updates(adapters, updates), opt_state, value

  with pytest.raises(ValueError, match="pass grads"):
    setup.init(params)
  adapters, projections, opt_state = jax.jit(setup.init)(params,
                                                         jax.jit(jax.grad(loss))(params, tokens))
  frozen, values = params, []
  for t in range(12):
    if setup.should_refresh(t):
      grads = full_grad(adapters, frozen, projections, tokens)
      frozen, adapters, projections, opt_state = refresh(frozen, adapters, projections,
                                                         opt_state, t, grads)
    for _ in range(k):
      adapters, opt_state, value = step(adapters, frozen, projections, opt_state)
    values.append(float(value))
  assert values[-1] < 0.8 * values[0]
  groups = optim.optimizer_state_bytes(opt_state, adapters, projections=projections)
  assert groups["state_low_rank"] > 0 and (k == 1 or groups["accumulators"] > 0)


@pytest.mark.parametrize("maker,overrides,match", [
    ("opt", dict(name="lion"), r"optim.name='lion' is unknown; expected one of \('adamw'"),
    ("opt", dict(name="onesided_lora"), "make_adapter_setup"),
    ("adapters", dict(name="galore"), "not an adapter method"),
    ("opt", dict(name="galore", projection="gaussian"), r"expected one of \('svd',\)"),
    ("opt", dict(name="random_sketch", projection="svd"), "optim.projection='svd'"),
    ("opt", dict(name="random_sketch", projection="sobol"), "optim.projection='sobol'"),
    ("opt", dict(name="kronecker", side="left"), "optim.side='left'"),
    ("opt", dict(name="galore", side="top"), "optim.side='top'"),
    ("opt", dict(name="galore", mask_regex="nothing"), "selects no parameter"),
    ("opt", dict(name="galore", rank=9), r"optim.rank=9 does not fit 3 .*attn/kernel \(8, 8\)"),
    ("opt", dict(name="galore", refresh_policy="drop"), "refresh_policy='drop'"),
    ("adapters", dict(name="onesided_lora", refresh_policy="drop"), "refresh_policy='drop'"),
    ("opt", dict(name="random_sketch", refresh_every=-2), "optim.refresh_every=-2"),
    ("opt", dict(accumulate_steps=0), "accumulate_steps=0"),
    ("opt", dict(warmup_steps=-1), "warmup_steps=-1"),
    ("opt", dict(learning_rate=None), "lacks the fields"),
])
def test_bad_config(maker, overrides, match):
  params, _, _ = _lm()
  cfg = config(**{k: v for k, v in overrides.items() if v is not None})
  for k, v in overrides.items():
    if v is None:
      delattr(cfg, k)
  make = optim.make_optimizer if maker == "opt" else optim.make_adapter_setup
  with pytest.raises(ValueError, match=match):
    make(cfg, params, num_steps=30)


def test_default_mask_selects_mixer_and_mlp_kernels():
  shapes = {"embed": {"embedding": (VOCAB, D)}, "head": {"kernel": (D, VOCAB)},
            "final_norm": {"scale": (D,)},
            "blocks": [{"mixer": {"q_proj": {"kernel": (D, D)}, "q_conv": {"kernel": (4, D)}},
                        "mlp": {"up": {"kernel": (D, F)}, "up_bias": {"bias": (F,)}}}]}
  params = jax.tree.map(jnp.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
  _, info = optim.make_optimizer(config("galore"), params, num_steps=10)
  assert info.projected == ("blocks/0/mixer/q_proj/kernel", "blocks/0/mlp/up/kernel")
