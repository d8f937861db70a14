"""Top-k bookkeeping shared by the kernels and the tests: pure Python, no torch, no cutlass.

The kernels keep each row's running top-k as ``k`` scalar registers (values and expert ids),
sorted descending, and insert a candidate with a fully unrolled compare-and-select network:
no dynamic indexing into the list and no loop of unknown length.  The same function is
called at trace time inside a CuTe DSL kernel (``ops`` builds ``arith.select``s) and on
plain Python numbers in the tests (``PY_OPS``), so the tests check the network the kernel
runs, not a copy of it.

Order: a candidate ``(v, i)`` beats ``(s, j)`` when ``v > s``, or ``v == s`` and ``i < j``
(lower expert id first on exact ties, what ``torch.topk`` does on CPU in practice but does
not promise).  NaN never beats anything.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, List, NamedTuple, Sequence, Tuple

#: id given to empty slots; larger than any expert id, so a real candidate with the same
#: value (-inf) still wins
EMPTY_ID = 1 << 30


class SelectOps(NamedTuple):
    select: Callable[[Any, Any, Any], Any]  #: select(cond, a, b) = a if cond else b
    better: Callable[[Any, Any, Any, Any], Any]  #: better(v, i, s, j): (v, i) ranks before (s, j)


def _py_better(v, i, s, j):
    return (v > s) or (v == s and i < j)


PY_OPS = SelectOps(select=lambda c, a, b: a if c else b, better=_py_better)


def _py_beats_strictly(v, i, s, j):
    return v > s


#: the order for candidates inserted in increasing id order (each lane of the decode kernels'
#: route scans its logits so): of two equal values the one already in the list has the lower id,
#: so a strict ``>`` alone keeps ``better``'s order
ASCENDING_ID_OPS = SelectOps(select=PY_OPS.select, better=_py_beats_strictly)

#: the order key of a NaN and of an empty slot: the smallest int32
KEY_FLOOR = -(1 << 31)


def order_key(v: float) -> int:
    """A float32 as the int32 whose signed order is the float order (the kernels' ``_order_key``):
    NaN maps to :data:`KEY_FLOOR`, so it never beats an empty slot; -0.0 ranks just below +0.0."""
    if v != v:
        return KEY_FLOOR
    b = struct.unpack("<i", struct.pack("<f", v))[0]
    return b ^ ((b >> 31) & 0x7FFFFFFF)


def key_value(key: int) -> float:
    """The float32 of an order key (inverse of :func:`order_key` for non-NaN values)."""
    return struct.unpack("<f", struct.pack("<i", key ^ ((key >> 31) & 0x7FFFFFFF)))[0]


def empty_topk(k: int, neg_inf, empty_id) -> Tuple[List[Any], List[Any]]:
    return [neg_inf] * k, [empty_id] * k


def sorted_insert(vals: Sequence[Any], ids: Sequence[Any], v, i, ops: SelectOps = PY_OPS):
    """Insert ``(v, i)`` into the descending list ``(vals, ids)`` of fixed length k; the last is dropped.

    Every comparison is against the *old* slots, so the k results are independent selects:
    slot j takes slot j-1 when the candidate beats slot j-1 (shift down), else the candidate
    when it beats slot j, else keeps its value.
    """
    k = len(vals)
    beats = [ops.better(v, i, vals[j], ids[j]) for j in range(k)]
    new_vals, new_ids = [], []
    for j in range(k):
        take_v = ops.select(beats[j], v, vals[j])
        take_i = ops.select(beats[j], i, ids[j])
        if j > 0:
            take_v = ops.select(beats[j - 1], vals[j - 1], take_v)
            take_i = ops.select(beats[j - 1], ids[j - 1], take_i)
        new_vals.append(take_v)
        new_ids.append(take_i)
    return new_vals, new_ids


def global_expert_index(col, tile_n_offset, subtile_idx=0, epi_n=0):
    """Expert id of accumulator column ``col`` of epilogue subtile ``subtile_idx`` (``epi_n`` columns
    each) in the N-tile that starts at expert ``tile_n_offset``.  Works on ints and DSL integers."""
    return col + tile_n_offset + subtile_idx * epi_n


def topk_of(values: Sequence[float], k: int, start_id: int = 0):
    """Reference use of :func:`sorted_insert`: scan ``values`` (ids ``start_id``...) in order."""
    vals, ids = empty_topk(k, float("-inf"), EMPTY_ID)
    for n, v in enumerate(values):
        vals, ids = sorted_insert(vals, ids, v, start_id + n)
    return vals, ids


def merge_topk(lists: Sequence[Tuple[Sequence[Any], Sequence[Any]]], k: int, ops: SelectOps = PY_OPS, neg_inf=float("-inf"), empty_id=EMPTY_ID):
    """Merge several partial top-k lists (e.g. per thread, per N-tile) by inserting every candidate."""
    vals, ids = empty_topk(k, neg_inf, empty_id)
    for lv, li in lists:
        for v, i in zip(lv, li):
            vals, ids = sorted_insert(vals, ids, v, i, ops)
    return vals, ids


def tiled_topk_model(values: Sequence[float], k: int, tile_n: int = 128, threads_per_row: int = 4):
    """Python model of the portable kernel's epilogue for one row: the row is cut into N-tiles of
    ``tile_n`` experts; inside a tile thread ``q`` scans columns ``q, q + tpr, ...`` into its own
    k registers; the tpr partial lists are then merged into the running list of earlier tiles.
    Returns ``(vals, ids)``; equal to a stable descending sort's first k."""
    run_v, run_i = empty_topk(k, float("-inf"), EMPTY_ID)
    n = len(values)
    for t0 in range(0, n, tile_n):
        partial = []
        for q in range(threads_per_row):
            pv, pi = empty_topk(k, float("-inf"), EMPTY_ID)
            for c in range(q, min(tile_n, n - t0), threads_per_row):
                pv, pi = sorted_insert(pv, pi, values[t0 + c], global_expert_index(c, t0))
            partial.append((pv, pi))
        for pv, pi in partial:
            for v, i in zip(pv, pi):
                run_v, run_i = sorted_insert(run_v, run_i, v, i)
    return run_v, run_i
