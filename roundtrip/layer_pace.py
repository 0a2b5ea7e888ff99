"""How long the next layer's refit will take, from the refits timed so far: reconstruction under a deadline
stops before a layer that would end past it (``reconstruction.reconstruct``).

The calibration batch is sized from a probe at the start (``_affordable_samples``), but a busy machine can slow
down after it, and what the probe does not run (each layer's normal equations, its solve, the eigendecomposition
that chooses its ridge) grows with the layer's width. ViT-S/14 at -30% with data, ``--time-budget 300``: 213 s
quiet, 362 s at load 6.3. So each refit is timed in three parts, each predicted the way it grows:

* the runs of both models up to the layer (``advance``): as the last layer of the same size took, else as the
  longest so far (how far the runs go differs from layer to layer, not with the layer's width);
* summing x^T x and x^T y over the rows (``add``): inputs x (inputs + outputs) per row (the layers of one
  model fit on about as many rows);
* the solve and the ridge choice (``solve``): inputs cubed.

A layer of a size refit before is predicted by the latest such layer (a transformer repeats its blocks: after the
first, every prediction is a measurement under the machine's load of a moment ago); any other by the latest layer,
scaled up by the part's growth when it is larger, never down (an overhead measured on a small layer is not
shrunk away).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LayerSize:
    """A refit's linear map: ``inputs`` rows of x^T x (the intercept's included), ``outputs`` columns."""

    inputs: int
    outputs: int

    @property
    def sum_work(self) -> float:
        """What summing x^T x and x^T y costs per row."""
        return float(self.inputs) * (self.inputs + self.outputs)

    @property
    def solve_work(self) -> float:
        """What the solve and the eigendecomposition of x^T x cost."""
        return float(self.inputs) ** 3


@dataclass(frozen=True)
class LayerTime:
    size: LayerSize
    advance: float  # seconds running both models up to the layer, over every batch
    add: float  # seconds summing the normal equations
    solve: float  # seconds solving, the ridge choice included

    @property
    def seconds(self) -> float:
        return self.advance + self.add + self.solve


def _scaled(seconds: float, work: float, measured_on: float) -> float:
    """``seconds`` measured on ``measured_on`` units of work, for ``work`` units: scaled up, never down."""
    return seconds * max(1.0, work / max(measured_on, 1e-30))


@dataclass
class LayerPace:
    """The refits timed so far, in the order they ran."""

    times: list[LayerTime] = field(default_factory=list)

    def record(self, time: LayerTime) -> None:
        self.times.append(time)

    def expected(self, size: LayerSize) -> float | None:
        """Seconds the refit of a layer of ``size`` should take (None: no refit timed yet)."""
        if not self.times:
            return None
        same = [t for t in self.times if t.size == size]
        if same:
            return same[-1].seconds
        latest = self.times[-1]
        advance = max(t.advance for t in self.times)
        add = _scaled(latest.add, size.sum_work, latest.size.sum_work)
        solve = _scaled(latest.solve, size.solve_work, latest.size.solve_work)
        return advance + add + solve
