"""k-th nearest distinct neighbours: a k-d tree on the host (CPU), tiled brute force elsewhere.

The search only finds *which* point is each query's k-th nearest at a non-zero distance; its
distance is then recomputed in JAX from that index, so gradients flow to the query and to the
neighbour exactly as through a brute-force minimum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial

_QUERIES_PER_TREE_CALL = 1 << 16  # Neighbour tables of at most 65,536 queries at a time.
_TILE_ELEMENTS = 1 << 22  # Brute force: query-block × point-block × d, about 16 MB in float32.
_POINT_BLOCK = 2048


def _tree_kth_one(
  queries: np.ndarray, points: np.ndarray, k: int, spare: int
) -> tuple[np.ndarray, ...]:
  """Index of each query's k-th nearest point at a non-zero distance, and whether it exists."""
  count = queries.shape[0]
  index = np.zeros(count, np.int32)
  found = np.zeros(count, bool)
  if not (np.all(np.isfinite(queries)) and np.all(np.isfinite(points))):
    return index, found  # The estimate is NaN anyway; a tree cannot hold NaN.
  tree = scipy.spatial.cKDTree(points)
  size = points.shape[0]
  for start in range(0, count, _QUERIES_PER_TREE_CALL):
    pending = np.arange(start, min(start + _QUERIES_PER_TREE_CALL, count))
    width = min(k + spare, size)  # spare = 1 when the queries are the points (each finds itself).
    while pending.size:
      dist, ind = tree.query(queries[pending], k=np.arange(1, width + 1), workers=-1)
      zeros = np.sum(dist == 0, axis=1)  # Sorted: the points at distance 0 come first.
      position = zeros + (k - 1)
      done = position < width
      rows = np.flatnonzero(done)
      chosen = ind[rows, position[rows]]
      exists = chosen < size  # cKDTree marks a missing neighbour with index `size`.
      index[pending[rows]] = np.where(exists, chosen, 0)
      found[pending[rows]] = exists
      if width == size:  # Every point was returned: fewer than k at a non-zero distance.
        break
      pending = pending[~done]
      if pending.size:
        width = min(size, max(2 * width, k + int(zeros[~done].max()) + 1))
  return index, found


def _tree_kth(queries: np.ndarray, points: np.ndarray, k: int, spare: int):
  """`_tree_kth_one` over any leading batch dimensions (broadcast between the two arguments)."""
  queries, points = np.asarray(queries), np.asarray(points)
  batch = np.broadcast_shapes(queries.shape[:-2], points.shape[:-2])
  queries = np.broadcast_to(queries, batch + queries.shape[-2:])
  points = np.broadcast_to(points, batch + points.shape[-2:])
  index = np.zeros(batch + queries.shape[-2:-1], np.int32)
  found = np.zeros(index.shape, bool)
  for b in np.ndindex(*batch):
    index[b], found[b] = _tree_kth_one(queries[b], points[b], k, spare)
  return index, found


def tree_indices(
  queries: jax.Array, points: jax.Array, k: int, spare: int = 1
) -> tuple[jax.Array, jax.Array]:
  """k-th nearest distinct neighbour of each query, by scipy's cKDTree (a host callback)."""
  shape = jax.ShapeDtypeStruct(queries.shape[:-1], jnp.int32)
  found = jax.ShapeDtypeStruct(queries.shape[:-1], jnp.bool_)
  # Under vmap the callback receives the batch as leading dimensions ("expand_dims": unbatched
  # arguments get a size-1 one, broadcast on the host without a copy) and loops over it.
  return jax.pure_callback(
    lambda q, p: _tree_kth(q, p, k, spare),
    (shape, found),
    queries,
    points,
    vmap_method="expand_dims",
  )


def distances(diff: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Euclidean norms of the rows of `diff` formed as a · ‖v / a‖, a = max_j |v_j|, and a > 0.

  Neither underflows nor overflows where the squared norm would (1e-20 and 1e20 in float32).
  """
  a = jax.lax.stop_gradient(jnp.max(jnp.abs(diff), axis=-1, keepdims=True))
  distinct = a > 0
  a = jnp.where(distinct, a, 1.0)
  squares = jnp.sum(jnp.square(diff / a), axis=-1, keepdims=True)
  return (a * jnp.sqrt(jnp.where(distinct, squares, 1.0)))[..., 0], distinct[..., 0]


def brute_indices(queries: jax.Array, points: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The same neighbours by tiled brute force: a running top-k over blocks of points.

  Memory is one tile of query-block × point-block × d elements (`_TILE_ELEMENTS`), whatever n.
  """
  count, d = queries.shape
  size = points.shape[0]
  point_block = min(size, _POINT_BLOCK)
  query_block = max(1, min(count, _TILE_ELEMENTS // (point_block * d)))
  point_blocks = -(-size // point_block)
  padded = jnp.pad(points, ((0, point_blocks * point_block - size), (0, 0)))
  padded = padded.reshape(point_blocks, point_block, d)
  starts = jnp.arange(point_blocks, dtype=jnp.int32) * point_block

  def one_block(query_rows):
    def merge(best, block):
      block_points, first = block
      dist, distinct = distances(block_points[None, :, :] - query_rows[:, None, :])
      ids = first + jnp.arange(point_block, dtype=jnp.int32)
      dist = jnp.where(distinct & (ids < size), dist, jnp.inf)
      values = jnp.concatenate([best[0], -dist], axis=1)
      indices = jnp.concatenate([best[1], jnp.broadcast_to(ids, dist.shape)], axis=1)
      top, where = jax.lax.top_k(values, k)
      return (top, jnp.take_along_axis(indices, where, axis=1)), None

    rows = query_rows.shape[0]
    init = (jnp.full((rows, k), -jnp.inf, points.dtype), jnp.zeros((rows, k), jnp.int32))
    (top, ids), _ = jax.lax.scan(merge, init, (padded, starts))
    return ids[:, k - 1], jnp.isfinite(top[:, k - 1])

  query_blocks = -(-count // query_block)
  rows = jnp.pad(queries, ((0, query_blocks * query_block - count), (0, 0)))
  ids, found = jax.lax.map(one_block, rows.reshape(query_blocks, query_block, d))
  return ids.reshape(-1)[:count], found.reshape(-1)[:count]


def kth_distinct_distance(
  queries: jax.Array, points: jax.Array, k: int, *, self_query: bool
) -> jax.Array:
  """Distance from each query to its k-th nearest point at a non-zero distance (inf if none).

  The neighbour is found without gradients (a k-d tree on CPU, tiled brute force on GPU/TPU,
  chosen by the platform the computation is lowered for); its distance is recomputed from it.
  `self_query`: the queries are the points (the tree search then asks for one more at once).
  """
  q, p = jax.lax.stop_gradient(queries), jax.lax.stop_gradient(points)
  index, found = jax.lax.platform_dependent(
    q,
    p,
    cpu=lambda a, b: tree_indices(a, b, k, int(self_query)),
    default=lambda a, b: brute_indices(a, b, k),
  )
  dist, distinct = distances(points[index] - queries)
  return jnp.where(found & distinct, dist, jnp.inf)
