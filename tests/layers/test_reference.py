"""Each recurrent layer against a from-scratch numpy reference of its paper's equations, token by
token, from the layer's own parameters: catches wiring mistakes (B and C swapped, a gate on the
wrong side of a norm, a conv tap off by one) that the ops tests cannot see."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.layers import make_mixer
from lloglin.models import ModelConfig

B, T, D = 2, 21, 16


def config(**overrides):
  values = dict(vocab_size=10, d_model=D, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8,
                mlp_dim=0, max_seq_len=32, chunk_size=8, norm_eps=1e-6)
  values.update(overrides)
  return ModelConfig(**values)


def p(x):
  return np.asarray(x[...], np.float64)


def silu(x):
  return x / (1 + np.exp(-x))


def softplus(x):
  return np.log1p(np.exp(x))


def conv(x_TC, kernel_WC, bias_C=None):
  W = kernel_WC.shape[0]
  y = np.stack([sum(kernel_WC[W - 1 - i] * x_TC[t - i] for i in range(W) if t - i >= 0)
                for t in range(len(x_TC))])
  return y if bias_C is None else y + bias_C


def rms(x, scale, eps=1e-6):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def mamba2_reference(m, x_TD):
  H, P, G, N, E = m.num_heads, m.head_dim, m.ngroups, m.d_state, m.d_inner
  proj = x_TD @ p(m.in_proj.kernel)
  z, xbc, dt = proj[:, :E], proj[:, E:2 * E + 2 * G * N], proj[:, 2 * E + 2 * G * N:]
  xbc = silu(conv(xbc, p(m.conv.kernel), p(m.conv.bias)))
  xs, Bs, Cs = xbc[:, :E], xbc[:, E:E + G * N], xbc[:, E + G * N:]
  delta = softplus(dt + p(m.dt_bias))
  A = -np.exp(p(m.A_log))
  h = np.zeros((H, N, P))
  ys = []
  for t in range(len(x_TD)):
    y = np.zeros((H, P))
    for hh in range(H):
      g = hh // (H // G)
      b, c, xv = Bs[t, g * N:(g + 1) * N], Cs[t, g * N:(g + 1) * N], xs[t, hh * P:(hh + 1) * P]
      h[hh] = np.exp(delta[t, hh] * A[hh]) * h[hh] + delta[t, hh] * np.outer(b, xv)
      y[hh] = c @ h[hh] + p(m.D)[hh] * xv
    ys.append(y.reshape(E))
  y = np.stack(ys) * silu(z)
  y = rms(y.reshape(len(x_TD), G, E // G), p(m.norm.scale).reshape(G, E // G)).reshape(-1, E)
  return y @ p(m.out_proj.kernel)


def gdn_reference(m, x_TD):
  G, H, K, V = m.num_heads, m.num_v_heads, m.head_dim, m.v_dim
  l2 = lambda a: a / np.sqrt(np.sum(a * a, -1, keepdims=True) + 1e-6)
  q = l2(silu(conv(x_TD @ p(m.q_proj.kernel), p(m.q_conv.kernel))).reshape(-1, G, K))
  k = l2(silu(conv(x_TD @ p(m.k_proj.kernel), p(m.k_conv.kernel))).reshape(-1, G, K))
  v = silu(conv(x_TD @ p(m.v_proj.kernel), p(m.v_conv.kernel))).reshape(-1, H, V)
  g = -np.exp(p(m.A_log)) * softplus(x_TD @ p(m.a_proj.kernel) + p(m.dt_bias))
  beta = 1 / (1 + np.exp(-(x_TD @ p(m.b_proj.kernel))))
  S = np.zeros((H, K, V))
  o = np.zeros((len(x_TD), H, V))
  for t in range(len(x_TD)):
    for h in range(H):
      kt, qt = k[t, h // (H // G)], q[t, h // (H // G)] * K**-0.5
      S[h] = np.exp(g[t, h]) * (S[h] - beta[t, h] * np.outer(kt, kt @ S[h]))  # decay, then A_t
      S[h] += beta[t, h] * np.outer(kt, v[t, h])
      o[t, h] = S[h].T @ qt
  gate = silu((x_TD @ p(m.gate_proj.kernel)).reshape(-1, H, V))
  o = rms(o, p(m.norm.scale)) * gate
  return o.reshape(len(x_TD), H * V) @ p(m.o_proj.kernel)


@pytest.mark.parametrize("name,reference,options", [
    ("mamba2", mamba2_reference, {"d_state": 4, "ngroups": 2}),
    ("gdn", gdn_reference, {"num_heads": 1, "num_v_heads": 2, "expand_v": 1.5}),
])
def test_layer_matches_its_reference(name, reference, options):
  mixer = make_mixer(name, config(mixer_options={name: options}), rngs=nnx.Rngs(params=0))
  x = np.random.default_rng(0).normal(size=(B, T, D))
  y = np.asarray(jax.jit(lambda x: mixer(x))(jnp.asarray(x, jnp.float32)), np.float64)
  for b in range(B):
    np.testing.assert_allclose(y[b], reference(mixer, x[b]), rtol=2e-4, atol=2e-5)
