"""S as Kronecker factors: definitions, sources, seeding and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin import optim
from lloglin.optim import projections as proj_lib

M, N = 7, 5


def _grad(shape=(M, N), seed=0):
  return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("side,rank,low_shape", [
    ("left", 3, (3, N)), ("right", 2, (M, 2)), ("two_sided", (3, 2), (3, 2)),
    ("dense", 4, (4, 1)), ("auto", 2, (2, N)),  # auto: left, since M >= N
])
def test_project_matches_the_explicit_matrix_and_back_project_is_its_transpose(
    side, rank, low_shape):
  with jax.enable_x64(True):
    g = jnp.asarray(_grad())
    source = "gaussian" if side == "dense" else "orthogonal"
    proj = optim.make_projection(optim.ProjectionSpec(rank, side, source), g, path="w")
    # The matrix of the linear map vec(G) -> vec(S(G)), vec stacking the columns.
    vec = lambda a: a.T.ravel()
    columns = jax.jit(jax.vmap(lambda e: vec(optim.project(e.reshape(N, M).T, proj))))
    s_matrix = np.asarray(columns(jnp.eye(M * N))).T
    low = optim.project(g, proj)
    assert low.shape == low_shape
    np.testing.assert_allclose(vec(np.asarray(low)), s_matrix @ vec(np.asarray(g)), atol=1e-12)
    u = jnp.asarray(_grad(low_shape, seed=1))
    np.testing.assert_allclose(vec(np.asarray(optim.back_project(u, proj, g.shape))),
                               s_matrix.T @ vec(np.asarray(u)), atol=1e-12)
    if side == "two_sided":  # S = Qᵀ ⊗ Pᵀ
      np.testing.assert_allclose(s_matrix, np.kron(proj.q.T, proj.p.T), atol=1e-12)
    if side == "dense":  # S = Pᵀ on the row-major flattened parameter
      np.testing.assert_allclose(np.asarray(low).ravel(), proj.p.T @ np.asarray(g).ravel(),
                                 atol=1e-12)


def test_sources():
  with jax.enable_x64(True):
    g = jnp.asarray(_grad((40, 30)))
    u, _, vh = np.linalg.svd(np.asarray(g), full_matrices=False)
    svd = optim.make_projection(optim.ProjectionSpec((3, 2), "two_sided", "svd"), g)
    np.testing.assert_allclose(np.abs(svd.p.T @ u[:, :3]), np.eye(3), atol=1e-10)
    np.testing.assert_allclose(np.abs(svd.q.T @ vh[:2].T), np.eye(2), atol=1e-10)
    orth = optim.make_projection(optim.ProjectionSpec(6, "left", "orthogonal"), g, path="a")
    np.testing.assert_allclose(orth.p.T @ orth.p, np.eye(6), atol=1e-12)
    gauss = optim.make_projection(optim.ProjectionSpec(6, "left", "gaussian"), g, path="a")
    norms = np.linalg.norm(np.asarray(gauss.p), axis=0)  # N(0, 1/m) entries: norms near 1
    assert np.all((norms > 0.5) & (norms < 1.5)) and not np.allclose(gauss.p.T @ gauss.p,
                                                                     np.eye(6), atol=1e-3)


def test_seeds_are_per_parameter_worker_and_refresh_and_reproducible():
  x = jnp.zeros((M, N))
  spec = optim.ProjectionSpec(3, "left", "gaussian")
  p = lambda **kw: np.asarray(optim.make_projection(spec, x, **{"path": "a/w", **kw}).p)
  np.testing.assert_array_equal(p(), p())
  for change in ({"path": "b/w"}, {"seed": 1}, {"worker_index": 1}, {"refresh_index": 1}):
    assert not np.allclose(p(), p(**change))


def test_make_projections_equals_make_projection_per_leaf():
  # The batched draws of make_projections give exactly the per-parameter factors.
  params = {"a": {"w": jnp.zeros((6, 4))}, "b": {"w": jnp.zeros((9, 4)), "v": jnp.zeros((3,))},
            "c": jnp.zeros((2, 2))}
  specs = {"a": {"w": optim.ProjectionSpec((2, 3), "two_sided", "orthogonal")},
           "b": {"w": optim.ProjectionSpec(2, "right", "gaussian"),
                 "v": optim.ProjectionSpec(2, "dense", "orthogonal")},
           "c": None}
  tree = optim.make_projections(specs, params, seed=4, refresh_index=3, worker_index=2)
  assert tree["c"] == optim.Projection()
  for outer, inner in (("a", "w"), ("b", "w"), ("b", "v")):
    one = optim.make_projection(specs[outer][inner], params[outer][inner], seed=4,
                                path=f"{outer}/{inner}", refresh_index=3, worker_index=2)
    chex.assert_trees_all_close(one, tree[outer][inner], rtol=0, atol=1e-6)


def test_specs_by_rule_selects_by_path_and_ndim():
  params = {"embed": jnp.zeros((8, 4)), "layers": [{"attn": {"kernel": jnp.zeros((4, 4)),
                                                             "bias": jnp.zeros((4,))}}],
            "norm": {"scale": jnp.zeros((4,))}}
  spec = optim.ProjectionSpec(2)
  specs = optim.specs_by_rule(params, spec, include=r"kernel$|embed", exclude="embed")
  assert specs == {"embed": None, "layers": [{"attn": {"kernel": spec, "bias": None}}],
                   "norm": {"scale": None}}
  assert proj_lib.path_str(jax.tree_util.tree_flatten_with_path(params)[0][1][0]) == \
      "layers/0/attn/bias"
  with pytest.raises(ValueError, match="include"):
    optim.specs_by_rule(params, spec, include="(")


@pytest.mark.parametrize("kwargs,match", [
    (dict(rank=0), "rank=0"),
    (dict(rank=2.0), "rank=2.0"),
    (dict(rank=(2, 2), side="left"), "pair of ranks"),
    (dict(rank=(2, 2, 2), side="two_sided"), "pair of ranks"),
    (dict(rank=2, side="diagonal"), "side='diagonal'"),
    (dict(rank=2, source="fourier"), "source='fourier'"),
    (dict(rank=2, side="dense", source="svd"), "dense"),
    (dict(rank=2, split=0), "split=0"),
])
def test_bad_specs(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.ProjectionSpec(**kwargs)


@pytest.mark.parametrize("spec,shape,match", [
    (optim.ProjectionSpec(8, "left", "gaussian"), (M, N), r"at most 7"),
    (optim.ProjectionSpec(6, "left", "svd"), (M, N), r"at most 5"),  # thin SVD: min(m, n)
    (optim.ProjectionSpec(6, "right", "orthogonal"), (M, N), r"at most 5"),
    (optim.ProjectionSpec((2, 6), "two_sided", "gaussian"), (M, N), r"at most \(7, 5\)"),
    (optim.ProjectionSpec(4, "dense", "gaussian"), (3,), r"at most 3"),
    (optim.ProjectionSpec(2, "left", "svd"), (5,), "needs a matrix view"),
    (optim.ProjectionSpec(2, "left", "svd", split=2), (5, 4), "needs a matrix view"),
])
def test_rank_and_shape_checked_against_the_parameter(spec, shape, match):
  with pytest.raises(ValueError, match=match) as info:
    optim.make_projections({"layer": {"w": spec}}, {"layer": {"w": jnp.zeros(shape)}})
  assert "'layer/w'" in str(info.value)


def test_specs_must_match_the_parameters():
  with pytest.raises(ValueError, match="structure of the parameters"):
    optim.make_projections({"a": None}, {"a": jnp.zeros((2, 2)), "b": jnp.zeros((2, 2))})
  with pytest.raises(TypeError, match="ProjectionSpec"):
    optim.make_projections({"a": 3}, {"a": jnp.zeros((2, 2))})
