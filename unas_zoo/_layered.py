"""Layered left-to-right layout of a small DAG with edge labels, in points (y grows downward).

Pure Python, so the geometry is testable without a renderer. Nodes sit in one column per rank (longest path from
the sources); between two rank columns sits a column for edge labels. An edge crossing several columns takes its
own slot in each (its label in the column just before its target), so lines and labels never share space: every
line runs horizontally through its slots and bends only in the empty gaps between columns. Crossings are reduced by
barycenter sweeps plus adjacent swaps; heights come from order-preserving least squares, which straightens edges
as far as the spacing allows.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Hashable, Sequence

__all__ = ['Box', 'Layout', 'layered_layout']


@dataclass(frozen=True)
class Box:
    """An axis-aligned box by its centre and size."""
    x: float
    y: float
    width: float
    height: float

    def overlaps(self, other: 'Box') -> bool:
        return (abs(self.x - other.x) * 2 < self.width + other.width
                and abs(self.y - other.y) * 2 < self.height + other.height)


@dataclass(frozen=True)
class Layout:
    """Node boxes, one label box (or None) per edge, and per edge its horizontal runs ``(x_start, x_end, y)``.

    Consecutive runs of an edge are joined by a curve through the gap between their columns; the first run starts on
    the source's outline and the last ends on the target's.
    """
    nodes: dict[Hashable, Box]
    labels: tuple[Box | None, ...]
    runs: tuple[tuple[tuple[float, float, float], ...], ...]
    width: float
    height: float


@dataclass(frozen=True)
class _Slot:
    """Where edge ``edge`` crosses column ``column``."""
    edge: int
    column: int


def _ranks(keys: Sequence[Hashable], edges: Sequence[tuple], last: Hashable | None) -> dict[Hashable, int]:
    preds: dict[Hashable, list] = {k: [] for k in keys}
    for src, dst, _ in edges:
        preds[dst].append(src)
    ranks: dict[Hashable, int] = {}

    def rank(key, seen=()):
        if key in seen:
            raise ValueError(f'the graph has a cycle through {key!r}')
        if key not in ranks:
            ranks[key] = 1 + max((rank(p, seen + (key,)) for p in preds[key]), default=-1)
        return ranks[key]

    for key in keys:
        rank(key)
    if last is not None:
        ranks[last] = max(r for k, r in ranks.items() if k != last) + 1
    return ranks


def _crossings(columns: list[list], succs: dict) -> int:
    total = 0
    for left, right in zip(columns, columns[1:]):
        position = {item: i for i, item in enumerate(right)}
        links = [(i, position[s]) for i, item in enumerate(left) for s in succs[item]]
        total += sum((a - c) * (b - d) < 0 for (a, b), (c, d) in itertools.combinations(links, 2))
    return total


def _order(columns: list[list], preds: dict, succs: dict, sweeps: int = 8) -> list[list]:
    """Barycenter sweeps, each followed by adjacent swaps that remove crossings; the best order seen wins."""
    best, best_crossings = [c[:] for c in columns], _crossings(columns, succs)
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        for c in (range(1, len(columns)) if down else range(len(columns) - 2, -1, -1)):
            neighbours, ref = (preds, columns[c - 1]) if down else (succs, columns[c + 1])
            position = {item: i for i, item in enumerate(ref)}
            own = {item: i for i, item in enumerate(columns[c])}
            columns[c].sort(key=lambda it: (sum(position[n] for n in neighbours[it]) / len(neighbours[it])
                                            if neighbours[it] else own[it]))
        crossings = _crossings(columns, succs)
        improved = True
        while improved:
            improved = False
            for column, i in ((col, i) for col in columns for i in range(len(col) - 1)):
                column[i], column[i + 1] = column[i + 1], column[i]
                swapped = _crossings(columns, succs)
                if swapped < crossings:
                    crossings, improved = swapped, True
                else:
                    column[i], column[i + 1] = column[i + 1], column[i]
        if crossings < best_crossings:
            best, best_crossings = [c[:] for c in columns], crossings
    return best


def _isotonic(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def _heights(columns: list[list], size: dict, neighbours: dict, vgap: float, sweeps: int = 30) -> dict:
    """Centres y, in column order with at least ``vgap`` between boxes, each as close to its neighbours as allowed."""
    offsets = {}
    for column in columns:
        offset = 0.0
        for i, item in enumerate(column):
            if i:
                offset += (size[column[i - 1]][1] + size[item][1]) / 2 + vgap
            offsets[item] = offset
    y = {item: offsets[item] - offsets[column[-1]] / 2 for column in columns for item in column}
    for sweep in range(sweeps):
        for column in (columns if sweep % 2 == 0 else columns[::-1]):
            want = [sum(y[n] for n in neighbours[it]) / len(neighbours[it]) if neighbours[it] else y[it]
                    for it in column]
            fitted = _isotonic([w - offsets[it] for w, it in zip(want, column)])
            y.update((it, f + offsets[it]) for it, f in zip(column, fitted))
    return y


def _ports(ends: list[tuple[int, float]], box: Box, spacing: float) -> dict[int, float]:
    """Spread the edges meeting one side of a node over its height, in the order of their other ends."""
    ends = sorted(ends, key=lambda e: e[1])
    step = min(spacing, 0.6 * box.height / max(len(ends) - 1, 1))
    return {edge: box.y + (i - (len(ends) - 1) / 2) * step for i, (edge, _) in enumerate(ends)}


def _chains(sizes: dict, edges: Sequence[tuple], ranks: dict) -> tuple[list[list], dict, list[list]]:
    """Columns of items (nodes, and one slot per edge per column it crosses), item sizes, each edge's items."""
    columns: list[list] = [[] for _ in range(2 * max(ranks.values()) + 1)]
    size: dict = dict(sizes)
    chains = []
    for key in sizes:
        columns[2 * ranks[key]].append(key)
    for e, (src, dst, label) in enumerate(edges):
        chain = [src]
        for c in range(2 * ranks[src] + 1, 2 * ranks[dst]):
            slot = _Slot(e, c)
            columns[c].append(slot)
            size[slot] = label if label and c == 2 * ranks[dst] - 1 else (0.0, 0.0)
            chain.append(slot)
        chains.append(chain + [dst])
    return columns, size, chains


def _column_centres(columns: list[list], widths: list[float], y: dict, succs: dict, hgap: float) -> list[float]:
    """x of each column; a gap widens with the steepest link through it, so crossing curves stay easy to follow."""
    rise = [max((abs(y[a] - y[b]) for a in column for b in succs[a]), default=0.0) for column in columns]
    x, xs = 0.0, []
    for c, width in enumerate(widths):
        x += (widths[c - 1] / 2 + min(max(hgap, 0.5 * rise[c - 1]), 3 * hgap) if c else 0) + width / 2
        xs.append(x)
    return xs


def _runs(chains: list[list], box: dict, column_width: dict, circles: Sequence[Hashable],
          port_spacing: float) -> tuple[tuple[tuple[float, float, float], ...], ...]:
    """Each edge's horizontal runs: out of its source's port, through its slots, into its target's port."""
    nodes = {chain[0] for chain in chains} | {chain[-1] for chain in chains}
    out_ports = {k: _ports([(e, box[ch[1]].y) for e, ch in enumerate(chains) if ch[0] == k], box[k], port_spacing)
                 for k in nodes}
    in_ports = {k: _ports([(e, box[ch[-2]].y) for e, ch in enumerate(chains) if ch[-1] == k], box[k], port_spacing)
                for k in nodes}

    def outline(key, port_y: float, side: int) -> float:
        b = box[key]
        half = b.width / 2
        if key in circles:
            half = max(half ** 2 - (port_y - b.y) ** 2, 0.0) ** 0.5
        return b.x + side * half

    runs = []
    for e, chain in enumerate(chains):
        src, dst = chain[0], chain[-1]
        edge_runs = [(outline(src, out_ports[src][e], 1), box[src].x + column_width[src] / 2, out_ports[src][e])]
        edge_runs += [(box[s].x - column_width[s] / 2, box[s].x + column_width[s] / 2, box[s].y) for s in chain[1:-1]]
        edge_runs.append((box[dst].x - column_width[dst] / 2, outline(dst, in_ports[dst][e], -1), in_ports[dst][e]))
        runs.append(tuple(edge_runs))
    return tuple(runs)


def layered_layout(
        sizes: dict[Hashable, tuple[float, float]],
        edges: Sequence[tuple[Hashable, Hashable, tuple[float, float] | None]],
        last: Hashable | None = None,
        circles: Sequence[Hashable] = (),
        hgap: float = 26.0,
        vgap: float = 12.0,
        port_spacing: float = 7.0,
) -> Layout:
    """Lay out nodes ``{key: (width, height)}`` and edges ``(source, target, label size or None)``.

    ``last`` (e.g. a cell's output) goes alone in the rightmost column; ``circles`` are drawn round, so their
    edges end on the circle. The graph must be acyclic.
    """
    columns, size, chains = _chains(sizes, edges, _ranks(list(sizes), edges, last))
    preds: dict = {item: [] for item in size}
    succs: dict = {item: [] for item in size}
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            succs[a].append(b)
            preds[b].append(a)
    columns = _order(columns, preds, succs)
    y = _heights(columns, size, {it: preds[it] + succs[it] for it in size}, vgap)
    top = min(y[it] - size[it][1] / 2 for it in size)
    widths = [max((size[it][0] for it in column), default=0.0) for column in columns]
    xs = _column_centres(columns, widths, y, succs, hgap)
    box = {it: Box(xs[c], y[it] - top, *size[it]) for c, column in enumerate(columns) for it in column}
    column_width = {it: widths[c] for c, column in enumerate(columns) for it in column}
    labels = tuple(next((box[s] for s in chain[1:-1] if size[s][0]), None) for chain in chains)
    return Layout({k: box[k] for k in sizes}, labels, _runs(chains, box, column_width, circles, port_spacing),
                  xs[-1] + widths[-1] / 2, max(b.y + b.height / 2 for b in box.values()))
