"""Custom vs built-in on the same inputs: forward and gradient differences.

For every norm of the registry (core/registry.py) and each of its built-ins, on representative
shapes and every float dtype; `parity.py` (at the repository root) prints the table.

Gradients are taken of sum(y * dy) for a fixed random cotangent dy, not of sum(y): the sum of a
normalized tensor does not depend on x, so d sum(y)/dx is 0 for both and would compare nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from normlab.core import registry
from normlab.core.tables import markdown_table, text_table


@dataclasses.dataclass(frozen=True)
class Case:
    """One custom function paired with one built-in of the same signature."""

    norm: str
    builtin_name: str
    custom: Callable
    reference: Callable
    param_names: tuple[str, ...]  # the arguments after the input, in order
    float64: bool = True  # the built-in supports float64


# Grouped norms are compared with this many groups (a divisor of every shape's channels).
GROUPS = 4


def cases_of(
    norm: registry.Norm,
    *,
    eps: float | None = None,
    groups: int = GROUPS,
    backward: str | None = None,
) -> list[Case]:
    """normlab's implementation against each built-in of `norm`, with the same settings."""
    settings = dict(eps=eps, groups=groups if norm.grouped else None, backward=backward)
    label = f"({groups})" if norm.grouped else ""
    return [
        Case(
            norm.name,
            builtin.label + label,
            norm.bind(norm.custom, **settings),
            norm.bind(builtin, **settings),
            tuple(p.name for p in norm.params),
            float64=builtin.float64,
        )
        for builtin in norm.builtins
    ]


CASES: tuple[Case, ...] = tuple(c for norm in registry.NORMS.values() for c in cases_of(norm))

# Representative shapes: the CNN's conv activations and dense activations; conv and dense
# kernels for weight norm.
ACTIVATION_SHAPES = ((64, 28, 28, 32), (64, 256))
KERNEL_SHAPES = ((3, 3, 32, 64), (1568, 256))
DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)


@dataclasses.dataclass(frozen=True)
class ParityResult:
    """Max differences between custom and built-in outputs and gradients, on one input."""

    norm: str
    builtin_name: str
    shape: tuple[int, ...]
    dtype: str
    forward_abs: float
    forward_rel: float
    grad_rel: dict[str, float]  # input name -> max |custom - builtin| / max |builtin|


def max_rel(a: tf.Tensor, b: tf.Tensor) -> float:
    """max |a - b| / max |b|, in float64: an error relative to the reference's scale."""
    a = tf.cast(a, tf.float64)
    b = tf.cast(b, tf.float64)
    scale = max(float(tf.reduce_max(tf.abs(b))), np.finfo(np.float64).tiny)
    return float(tf.reduce_max(tf.abs(a - b))) / scale


def make_inputs(
    case: Case, shape: Sequence[int], dtype: tf.DType, seed: int = 0
) -> dict[str, tf.Tensor]:
    """Random inputs for `case`: x (or v) in `dtype`, parameters in float32 (float64 for
    float64), as under mixed precision. x has a non-zero mean so centering matters."""
    rng = np.random.default_rng(seed)
    param_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    channels = shape[-1]
    name = "v" if registry.NORMS[case.norm].target == registry.KERNEL else "x"
    inputs = {name: tf.cast(rng.normal(0.5, 2.0, shape), dtype)}
    for p in case.param_names:
        center = 0.0 if p == "beta" else 1.0
        inputs[p] = tf.constant(rng.normal(center, 0.3, [channels]), param_dtype)
    return inputs


def compare(case: Case, inputs: dict[str, tf.Tensor], seed: int = 1) -> ParityResult:
    """Runs custom and built-in on the same inputs and the same cotangent; returns the diffs."""
    names = list(inputs)
    values = [inputs[n] for n in names]
    first = values[0]
    dy = tf.cast(np.random.default_rng(seed).normal(size=first.shape), first.dtype)

    def run(fn):
        with tf.GradientTape() as tape:
            tape.watch(values)
            y = fn(*values)
            objective = tf.reduce_sum(tf.cast(y, tf.float64) * tf.cast(dy, tf.float64))
        return y, tape.gradient(objective, values)

    y_custom, g_custom = run(case.custom)
    y_builtin, g_builtin = run(case.reference)
    diff = tf.abs(tf.cast(y_custom, tf.float64) - tf.cast(y_builtin, tf.float64))
    return ParityResult(
        norm=case.norm,
        builtin_name=case.builtin_name,
        shape=tuple(first.shape.as_list()),
        dtype=first.dtype.name,
        forward_abs=float(tf.reduce_max(diff)),
        forward_rel=max_rel(y_custom, y_builtin),
        grad_rel={n: max_rel(a, b) for n, a, b in zip(names, g_custom, g_builtin)},
    )


def supported(case: Case, dtype: tf.DType) -> bool:
    """Whether the built-in has a kernel for `dtype` (fused_batch_norm has none for float64)."""
    return case.float64 or dtype != tf.float64


def table() -> list[ParityResult]:
    """Every case over the representative shapes and dtypes."""
    results = []
    for case in CASES:
        kernel = registry.NORMS[case.norm].target == registry.KERNEL
        shapes = KERNEL_SHAPES if kernel else ACTIVATION_SHAPES
        for shape in shapes:
            for dtype in DTYPES:
                if supported(case, dtype):
                    results.append(compare(case, make_inputs(case, shape, dtype)))
    return results


def format_table(results: Sequence[ParityResult], markdown: bool = False) -> str:
    """The results as an aligned text table, or a Markdown one."""
    header = [
        "norm",
        "built-in",
        "shape",
        "dtype",
        "fwd max abs",
        "fwd max rel",
        "grad max rel (per input)",
    ]
    rows = [
        [
            r.norm,
            r.builtin_name,
            "x".join(map(str, r.shape)),
            r.dtype,
            f"{r.forward_abs:.1e}",
            f"{r.forward_rel:.1e}",
            ", ".join(f"d{n} {v:.1e}" for n, v in r.grad_rel.items()),
        ]
        for r in results
    ]
    return markdown_table(header, rows) if markdown else text_table(header, rows)
