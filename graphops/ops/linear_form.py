"""What a layer with a constant weight computes, as its op handler describes it.

Layer-wise reconstruction (``roundtrip.reconstruction``) refits such a layer by least squares as a
matrix [inputs, outputs] applied to rows of its input; this says how to get those rows and that
matrix from the op without knowing its name: which inputs hold the weight and the bias, which weight
axes are inputs and outputs, and whether the inputs are windows of a spatial kernel (im2col).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LinearForm:
    """A layer whose output is its data input times a constant weight, plus a bias.

    ``outputs_first``: the weight is stored [outputs, inputs, kernel...] (Conv; Gemm with transB), so
    as an [inputs, outputs] matrix it is the transpose of its flattening; otherwise it is stored
    [inputs, outputs] (MatMul; Gemm). ``kernel_rank``: its trailing spatial kernel axes (2 for a 2-D
    conv, 0 for a dense layer): the layer's inputs are then the windows of its data input at each
    output position. ``bias_input`` None: the op has no bias input (an exporter writes a Linear as
    MatMul -> Add(bias), and the refit's intercept goes to that Add).
    """

    weight_shape: tuple[int, ...]
    outputs_first: bool
    kernel_rank: int = 0
    data_input: int = 0
    weight_input: int = 1
    bias_input: int | None = None

    @property
    def input_axis(self) -> int:
        """The weight axis over the layer's input channels."""
        return 1 if self.outputs_first else 0

    @property
    def output_axis(self) -> int:
        return 0 if self.outputs_first else 1

    @property
    def input_width(self) -> int:
        """Input channels the weight reads (for a conv, before its kernel window)."""
        return self.weight_shape[self.input_axis]

    @property
    def output_width(self) -> int:
        return self.weight_shape[self.output_axis]

    @property
    def kernel(self) -> tuple[int, ...]:
        return self.weight_shape[len(self.weight_shape) - self.kernel_rank :]

    @property
    def windowed(self) -> bool:
        """Its inputs are spatial windows (im2col at output positions), not rows of the last axis."""
        return self.kernel_rank > 0

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The weight as the [inputs, outputs] matrix a least-squares refit solves for."""
        return self.input_width * math.prod(self.kernel), self.output_width
