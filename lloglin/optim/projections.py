"""Linear gradient transforms S for one parameter, stored as Kronecker factors.

A parameter of shape `shape` is viewed as a matrix of shape (m, n), with
m = prod(shape[:split]) and n = prod(shape[split:]) (row-major reshape, no copy). On that matrix
S acts as S(G) = Pᵀ G Q, where a missing factor means the identity (the dual adapters:
docs/literature.md#optimizer-duality):

  side        factors   S(G)        low-rank shape  dual adapter
  left        P         Pᵀ G        (r, n)          W = W0 + P B     (GaLore left, LoRA-FA)
  right       Q         G Q         (m, r)          W = W0 + A Qᵀ    (GaLore right)
  two_sided   P, Q      Pᵀ G Q      (r1, r2)        W = W0 + P C Qᵀ  (S = Qᵀ ⊗ Pᵀ)
  dense       P         Pᵀ vec(G)   (r, 1)          θ = θ0 + P φ     (any dense S = Pᵀ)
  auto        left when m >= n, else right (GaLore's and optax.contrib.galore's rule)

`dense` is `left` on the (d, 1) view of the row-major flattened parameter, so one code path
serves all sides, and S itself (r x mn for the one-sided and Kronecker transforms) is never
formed.

Sources of P and Q: "svd" (top singular vectors of the current gradient, as GaLore),
"gaussian" (i.i.d. N(0, 1/d) entries, so columns have unit norm in expectation) and
"orthogonal" (orthonormal columns, Haar-distributed). All three give PᵀP ≈ I, so a learning
rate carries over between them. Random factors are seeded per parameter from
(seed, parameter path, worker index, refresh index), so runs are reproducible and every layer,
worker and refresh period gets its own draw.
"""

import dataclasses
import math
import re
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

SIDES = ("left", "right", "auto", "two_sided", "dense")
SOURCES = ("svd", "gaussian", "orthogonal")


@dataclasses.dataclass(frozen=True)
class ProjectionSpec:
  """How one parameter is projected.

  Attributes:
    rank: r; for side="two_sided" an int (r1 = r2) or a pair (r1, r2).
    side: one of SIDES.
    source: one of SOURCES ("svd" needs a matrix view, so it is invalid with side="dense").
    split: the number of leading axes that form the rows of the matrix view.
  """
  rank: int | tuple[int, int]
  side: str = "auto"
  source: str = "svd"
  split: int = 1

  def __post_init__(self):
    if self.side not in SIDES:
      raise ValueError(f"side={self.side!r} is unknown; expected one of {SIDES}")
    if self.source not in SOURCES:
      raise ValueError(f"source={self.source!r} is unknown; expected one of {SOURCES}")
    if self.side == "dense" and self.source == "svd":
      raise ValueError("source='svd' needs a matrix view but side='dense' flattens the "
                       "parameter; use source='gaussian' or 'orthogonal' for a dense S")
    ranks = self.rank if isinstance(self.rank, tuple) else (self.rank,)
    if isinstance(self.rank, tuple) and (self.side != "two_sided" or len(self.rank) != 2):
      raise ValueError(f"rank={self.rank!r}: a pair of ranks is only valid with "
                       f"side='two_sided' (got side={self.side!r}); expected an int")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
      raise ValueError(f"rank={self.rank!r}: expected a positive int"
                       + (" or a pair of them" if self.side == "two_sided" else ""))
    if not isinstance(self.split, int) or self.split < 1:
      raise ValueError(f"split={self.split!r}: expected an int >= 1")


class Projection(NamedTuple):
  """The factors of S for one parameter; None means the identity (both None: not projected)."""
  p: jax.Array | None = None  # (m, r1): left factor
  q: jax.Array | None = None  # (n, r2): right factor


class Layout(NamedTuple):
  """A spec resolved against a shape: matrix view (m, n); r1 = 0 (r2 = 0) means no P (no Q)."""
  m: int
  n: int
  r1: int
  r2: int


def is_projection(x: Any) -> bool:
  return isinstance(x, Projection)


def is_projected(proj: Projection) -> bool:
  return proj.p is not None or proj.q is not None


def path_str(path: tuple) -> str:
  """'layers/0/attn/kernel' for a jax key path (an nnx Variable's trailing '.value' dropped)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    else:
      parts.append(str(k))
  last = path[-1] if path else None
  if len(path) > 1 and isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
    parts.pop()
  return "/".join(parts)


def resolve(spec: ProjectionSpec, shape: tuple[int, ...], path: str = "") -> Layout:
  """Checks `spec` against a parameter shape and returns its layout."""
  where = f" for parameter {path!r}" if path else ""
  size = math.prod(shape)
  if spec.side == "dense":
    m, n, sides = size, 1, "left"
  else:
    if len(shape) < 2 or spec.split >= len(shape):
      raise ValueError(f"side={spec.side!r}{where} needs a matrix view: shape {shape} with "
                       f"split={spec.split} leaves no columns; expected ndim > split >= 1 "
                       f"(use side='dense' for vectors)")
    m, n = math.prod(shape[:spec.split]), math.prod(shape[spec.split:])
    sides = spec.side if spec.side != "auto" else ("left" if m >= n else "right")
  if sides == "two_sided":
    r1, r2 = spec.rank if isinstance(spec.rank, tuple) else (spec.rank, spec.rank)
  else:
    r1, r2 = (spec.rank, 0) if sides == "left" else (0, spec.rank)
  # svd takes singular vectors from a thin SVD, which has min(m, n) of them.
  max_r1 = min(m, n) if spec.source == "svd" else m
  max_r2 = min(m, n) if spec.source == "svd" else n
  if r1 > max_r1 or r2 > max_r2:
    allowed = {"left": max_r1, "right": max_r2, "two_sided": (max_r1, max_r2)}[sides]
    raise ValueError(
        f"rank={spec.rank!r}{where} is larger than the dimension it projects: shape {shape} "
        f"is viewed as a ({m}, {n}) matrix; side={sides!r} with source={spec.source!r} "
        f"allows a rank of at most {allowed}")
  return Layout(m, n, r1, r2)


def low_rank_shape(shape: tuple[int, ...], proj: Projection) -> tuple[int, ...]:
  """Shape of S(G) for a gradient of shape `shape`."""
  if not is_projected(proj):
    return tuple(shape)
  size = math.prod(shape)
  if proj.q is None:
    return (proj.p.shape[1], size // proj.p.shape[0])
  if proj.p is None:
    return (size // proj.q.shape[0], proj.q.shape[1])
  return (proj.p.shape[1], proj.q.shape[1])


def project(g: jax.Array, proj: Projection) -> jax.Array:
  """S(g): Pᵀ G Q on the matrix view of g (g itself when not projected)."""
  if not is_projected(proj):
    return g
  if proj.p is not None:
    g_mn = g.reshape(proj.p.shape[0], -1)
    g_rn = jnp.einsum("mr,mn->rn", proj.p, g_mn)
    return g_rn if proj.q is None else jnp.einsum("rn,ns->rs", g_rn, proj.q)
  g_mn = g.reshape(-1, proj.q.shape[0])
  return jnp.einsum("mn,ns->ms", g_mn, proj.q)


def back_project(u: jax.Array, proj: Projection, shape: tuple[int, ...]) -> jax.Array:
  """Sᵀ(u): P u Qᵀ reshaped to the parameter shape (u itself when not projected)."""
  if not is_projected(proj):
    return u
  if proj.p is not None:
    u = jnp.einsum("mr,rn->mn", proj.p, u)
  if proj.q is not None:
    u = jnp.einsum("mr,nr->mn", u, proj.q)
  return u.reshape(shape)


def projection_key(seed: int, path: str, factor: str, refresh_index: Any = 0,
                   worker_index: int = 0):
  """PRNG key of one factor ("p" or "q") of one parameter.

  (seed, worker, path, factor) are static and hashed on the host; the refresh index, which may
  be traced, is folded in.
  """
  return jax.random.fold_in(jax.random.key(_static_seed(seed, path, factor, worker_index)),
                            refresh_index)


def _static_seed(seed: int, path: str, factor: str, worker_index: int) -> int:
  return zlib.crc32(f"{seed}|{worker_index}|{path}|{factor}".encode()) & 0x7FFFFFFF


def _to_factor(x_dr: jax.Array, source: str, dtype) -> jax.Array:
  """A factor from standard normal draws: scaled (gaussian) or orthonormalised (orthogonal)."""
  if source == "gaussian":
    return (x_dr / math.sqrt(x_dr.shape[-2])).astype(dtype)
  q_dr, r_rr = jnp.linalg.qr(x_dr)
  # Fixing the signs by diag(R) makes Q Haar-distributed and a deterministic function of x.
  signs = jnp.where(jnp.diagonal(r_rr, axis1=-2, axis2=-1) < 0, -1, 1)
  return (q_dr * signs[..., None, :]).astype(dtype)


def _draw(key, shape, dtype):
  return jax.random.normal(key, shape, dtype=jnp.promote_types(dtype, jnp.float32))


def make_projection(spec: ProjectionSpec, x: jax.Array, *, seed: int = 0, path: str = "",
                    refresh_index: Any = 0, worker_index: int = 0) -> Projection:
  """The factors of S for one parameter.

  Args:
    spec: the projection.
    x: the current gradient for source="svd"; for random sources only its shape and dtype are
      read (a parameter or a jax.ShapeDtypeStruct will do).
    seed, path, refresh_index, worker_index: seed the random factors (see `projection_key`);
      `path` also names the parameter in error messages.
  """
  m, n, r1, r2 = resolve(spec, x.shape, path)
  if spec.source == "svd":
    g_mn = x.reshape(m, n).astype(jnp.promote_types(x.dtype, jnp.float32))
    u_mk, _, vh_kn = jnp.linalg.svd(g_mn, full_matrices=False)
    p = u_mk[:, :r1].astype(x.dtype) if r1 else None
    q = vh_kn[:r2].T.astype(x.dtype) if r2 else None
    return Projection(p, q)
  factors = []
  for factor, d, r in (("p", m, r1), ("q", n, r2)):
    key = projection_key(seed, path, factor, refresh_index, worker_index)
    factors.append(_to_factor(_draw(key, (d, r), x.dtype), spec.source, x.dtype) if r else None)
  return Projection(*factors)


def zero_projection(spec: ProjectionSpec, x: jax.Array, path: str = "") -> Projection:
  """Factors of the right shapes filled with zeros (a placeholder until the first refresh)."""
  m, n, r1, r2 = resolve(spec, x.shape, path)
  return Projection(jnp.zeros((m, r1), x.dtype) if r1 else None,
                    jnp.zeros((n, r2), x.dtype) if r2 else None)


def resolve_specs(specs: Any, params: Any) -> Any:
  """`specs` (a params-shaped tree of ProjectionSpec | None, or a callable params -> such a tree)
  as a tree, each spec checked against its parameter's shape."""
  tree = specs(params) if callable(specs) else specs
  is_spec_leaf = lambda x: x is None or isinstance(x, ProjectionSpec)
  if jax.tree.structure(tree, is_leaf=is_spec_leaf) != jax.tree.structure(params):
    raise ValueError("specs must have the structure of the parameters, with a ProjectionSpec "
                     f"or None per leaf; got {jax.tree.structure(tree, is_leaf=is_spec_leaf)} "
                     f"for parameters {jax.tree.structure(params)}")

  def check(path, x, spec):
    if spec is not None:
      if not isinstance(spec, ProjectionSpec):
        raise TypeError(f"specs[{path_str(path)!r}] is {spec!r}; expected a ProjectionSpec "
                        "or None")
      resolve(spec, x.shape, path_str(path))
    return spec

  return jax.tree_util.tree_map_with_path(check, params, tree)


def make_projections(specs: Any, tree: Any, *, seed: int = 0, refresh_index: Any = 0,
                     worker_index: int = 0, zeros: bool = False) -> Any:
  """A params-shaped tree of Projection (empty where the spec is None).

  Equal, leaf by leaf, to `make_projection` with the leaf's path; the random draws are batched
  over factors of the same shape (one hash and one normal draw per shape, however many layers),
  which keeps a jitted refresh quick to compile.

  Args:
    specs: see `resolve_specs`.
    tree: the gradient when any spec has source="svd"; otherwise anything with the parameters'
      shapes and dtypes.
    seed, refresh_index, worker_index: seed the random factors (see `projection_key`).
    zeros: return zero placeholders instead (shapes only).
  """
  specs = resolve_specs(specs, tree)
  items = jax.tree_util.tree_flatten_with_path(tree)[0]
  spec_leaves = jax.tree.structure(tree).flatten_up_to(specs)
  out = [Projection()] * len(items)
  requests = []  # (leaf index, slot, d, r, source, dtype, static seed) per random factor
  for i, ((path, x), spec) in enumerate(zip(items, spec_leaves, strict=True)):
    if spec is None:
      continue
    name = path_str(path)
    if zeros:
      out[i] = zero_projection(spec, x, name)
    elif spec.source == "svd":
      out[i] = make_projection(spec, x, path=name)
    else:
      m, n, r1, r2 = resolve(spec, x.shape, name)
      for slot, factor, d, r in ((0, "p", m, r1), (1, "q", n, r2)):
        if r:
          requests.append((i, slot, d, r, spec.source, jnp.dtype(x.dtype),
                           _static_seed(seed, name, factor, worker_index)))
  for request, x_dr in zip(requests, _batched_draws(requests, refresh_index), strict=True):
    i, slot, _, _, source, dtype, _ = request
    fields = list(out[i])
    fields[slot] = _to_factor(x_dr, source, dtype)
    out[i] = Projection(*fields)
  return jax.tree.unflatten(jax.tree.structure(tree), out)


# Draws of at most this many numbers share one padded batch; larger ones are batched by size.
_SMALL_DRAW = 1 << 16


def _batched_draws(requests: list, refresh_index: Any) -> list:
  """normal(projection_key(...), (d, r)) for each request, with one hash and one draw per group.

  With JAX's default partitionable threefry a draw of shape (d, r) equals the first d*r numbers
  of a longer draw from the same key, so padding does not change the values.
  """
  groups = {}
  for j, (_, _, d, r, _, dtype, _) in enumerate(requests):
    size = d * r
    groups.setdefault((0 if size <= _SMALL_DRAW else size, dtype), []).append(j)
  draws = [None] * len(requests)
  for (_, dtype), members in groups.items():
    size = max(requests[j][2] * requests[j][3] for j in members)
    statics = jnp.asarray([requests[j][6] for j in members], jnp.uint32)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), refresh_index))(statics)
    x_gs = jax.vmap(lambda k: _draw(k, (size,), dtype))(keys)
    for row, j in enumerate(members):
      d, r = requests[j][2], requests[j][3]
      draws[j] = x_gs[row, :d * r].reshape(d, r)
  return draws


def project_tree(tree: Any, projections: Any) -> Any:
  return jax.tree.map(project, tree, projections)


def back_project_tree(low: Any, projections: Any, like: Any) -> Any:
  """Sᵀ applied leaf by leaf; `like` gives the parameter shapes and dtypes."""
  return jax.tree.map(lambda u, proj, x: back_project(u, proj, x.shape).astype(x.dtype),
                      low, projections, like)


def low_rank_zeros(params: Any, projections: Any) -> Any:
  """Zeros with the low-rank shapes (the parameters themselves where not projected)."""
  return jax.tree.map(
      lambda x, proj: jnp.zeros(low_rank_shape(x.shape, proj), x.dtype)
      if is_projected(proj) else x, params, projections)


def specs_by_rule(params: Any, spec: ProjectionSpec, *, include: str = "",
                  exclude: str = "", min_ndim: int = 2) -> Any:
  """`spec` for every parameter whose path matches `include` (re.search; "" = all), does not
  match `exclude` ("" = none) and has ndim >= min_ndim; None elsewhere.

  Paths are `path_str` strings such as 'layers/0/mlp/up/kernel'.
  """
  for name, pattern in (("include", include), ("exclude", exclude)):
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{name}={pattern!r} is not a valid regular expression: {e}") from e

  def leaf(path, x):
    name = path_str(path)
    ok = (x.ndim >= min_ndim and (not include or re.search(include, name))
          and not (exclude and re.search(exclude, name)))
    return spec if ok else None

  return jax.tree_util.tree_map_with_path(leaf, params)
