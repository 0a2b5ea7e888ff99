"""Channel atoms and the state dependency analysis builds while walking the graph.

An *atom* is one channel of one tensor where channels first appear (a conv's filters, a graph
input's channels). Atoms that must be removed together are united (a residual Add unites its two
operands position by position); a united set is a *channel class*. Atoms created together form a
*space*; spaces linked by a union form one *channel group*, the unit of scoring and selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UnionFind:
    """Disjoint sets over dense integer ids (path halving, union by size)."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []

    def add(self, count: int) -> range:
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        self._size.extend([1] * count)
        return range(start, start + count)

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, item: int) -> int:
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]
        return ra

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self._parent))), dtype=np.int64, count=len(self._parent))


@dataclass(frozen=True)
class Layout:
    """Which channel atom sits at each position of a tensor's channel axis.

    A layout may span two axes: after a Reshape splits channels into [heads, head_dim], ``axis``
    indexes the units (heads) and ``unit_axis`` the channels inside each unit, which are removed
    with it (one atom per unit stands for all of them: they are one class). ``unit_axis`` is None
    for plain channels.
    """

    axis: int
    atoms: np.ndarray  # int64, one atom id per position along ``axis``
    unit_axis: int | None = None

    def __len__(self) -> int:
        return int(self.atoms.shape[0])

    def moved(self, axis: int, atoms: np.ndarray | None = None) -> Layout:
        """The same channels on another axis; only for plain layouts (units move with ``Transpose``)."""
        return Layout(axis, self.atoms if atoms is None else atoms)


@dataclass(frozen=True)
class Producer:
    """Filters that create (or, for depthwise convs, transform) channels: scored by criteria."""

    node: str
    weight: str  # initializer name
    axis: int  # the weight axis indexed by the output channel
    atoms: np.ndarray  # atom of each output position
    # > 1 for a grouped ConvTranspose, whose weight [C_in, C_out / groups, ...] indexes output
    # channel k * (C_out / groups) + j by (rows of conv group k, column j).
    groups: int = 1
    # (start, stop) along ``axis`` for one layer of a packed weight (Q, K or V of a fused attention's
    # [in, Q | K | V] weight): each part is scored as the layer it is. None: the whole axis.
    part: tuple[int, int] | None = None

    def filters(self, weight: np.ndarray) -> np.ndarray:
        """One row per output position (``len(atoms)`` rows): the weights that compute it."""
        if self.part is not None:
            weight = np.take(weight, np.arange(*self.part), axis=self.axis)
        if self.groups > 1:
            c_in, per_group = weight.shape[0], weight.shape[1]
            blocks = weight.reshape(self.groups, c_in // self.groups, per_group, -1).transpose(0, 2, 1, 3)
            rows: np.ndarray = blocks.reshape(self.groups * per_group, -1)
            return rows
        moved = np.moveaxis(weight, self.axis, 0)
        return moved.reshape(moved.shape[0], -1)


@dataclass(frozen=True)
class ConstSlice:
    """A constant input whose ``axis`` follows the channels ``atoms``: sliced when they go."""

    node: str
    input_index: int
    axis: int
    atoms: np.ndarray


@dataclass(frozen=True)
class ShapeEntry:
    """A constant element that spells out a channel count (a Reshape target, Resize sizes, or a
    piece of a Concat'd shape): surgery sets it to the number of ``atoms`` positions kept."""

    node: str
    input_index: int
    position: int
    atoms: np.ndarray


@dataclass
class RuntimeCount:
    """A channel count a ``Shape`` node reads at run time and that lands in a Reshape's target.

    Harmless when the Reshape puts the same channels at that position (the count then follows the
    pruning at run time); any position not claimed so (``followed``) pins the channels.
    """

    reshape: str
    positions: frozenset[int]
    atoms: np.ndarray
    reason: str
    followed: set[int] = field(default_factory=set)


@dataclass
class Pin:
    atoms: np.ndarray
    reason: str


@dataclass
class TrackerState:
    """Everything the op handlers record while the graph is walked in topological order."""

    atoms: UnionFind = field(default_factory=UnionFind)
    spaces: UnionFind = field(default_factory=UnionFind)
    atom_space: list[int] = field(default_factory=list)
    space_origin: list[str] = field(default_factory=list)
    layouts: dict[str, Layout] = field(default_factory=dict)
    producers: list[Producer] = field(default_factory=list)
    pins: list[Pin] = field(default_factory=list)
    slices: list[ConstSlice] = field(default_factory=list)
    # The subset of slices on axes that a node sums over (conv/gemm input channels): the
    # verification oracle zeroes these instead of removing them.
    reductions: list[ConstSlice] = field(default_factory=list)
    shape_entries: list[ShapeEntry] = field(default_factory=list)
    # Each entry: the atoms of g blocks whose kept counts must stay equal (grouped convs).
    balanced_blocks: list[list[np.ndarray]] = field(default_factory=list)
    # Each entry: atoms of which at least one must survive (a conv's output, a Split or Slice output).
    nonempty: list[np.ndarray] = field(default_factory=list)
    runtime_counts: list[RuntimeCount] = field(default_factory=list)
    # Each entry: one atom per unit (attention head) and the channels each unit stands for.
    units: list[tuple[np.ndarray, int]] = field(default_factory=list)

    def new_atoms(self, count: int, origin: str) -> np.ndarray:
        space = self.spaces.add(1)[0]
        self.space_origin.append(origin)
        ids = self.atoms.add(count)
        self.atom_space.extend([space] * count)
        atoms = np.arange(ids.start, ids.stop, dtype=np.int64)
        self.nonempty.append(atoms)  # no producer may lose all its channels
        return atoms

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if self.atoms.find(x) != self.atoms.find(y):
                self.atoms.union(x, y)
                self.spaces.union(self.atom_space[x], self.atom_space[y])

    def pin(self, atoms: np.ndarray, reason: str) -> None:
        if len(atoms):
            self.pins.append(Pin(np.asarray(atoms, dtype=np.int64), reason))
