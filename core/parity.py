"""Custom vs built-in on the same inputs: forward and gradient differences.

    python -m normlab.core.parity            # the table for every norm, shape and dtype
    python -m normlab.core.parity --markdown # the same as a Markdown table (BUILD_NOTES.md)

Gradients are taken of sum(y * dy) for a fixed random cotangent dy, not of sum(y): the sum of a
normalized tensor does not depend on x, so d sum(y)/dx is 0 for both and would compare nothing.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from normlab import core
from normlab.core import builtin


@dataclasses.dataclass(frozen=True)
class Case:
    """One custom function paired with one built-in of the same signature."""

    norm: str
    builtin_name: str
    custom: Callable
    reference: Callable
    param_names: tuple[str, ...]  # the arguments after the input, in order
    groups: int | None = None


CASES: tuple[Case, ...] = (
    Case(
        "batch",
        "tf.nn.batch_normalization",
        core.batch_norm,
        builtin.batch_norm_nn,
        ("gamma", "beta"),
    ),
    Case("batch", "fused_batch_norm", core.batch_norm, builtin.fused_batch_norm, ("gamma", "beta")),
    Case(
        "layer",
        "keras LayerNormalization",
        core.layer_norm,
        builtin.layer_norm_keras,
        ("gamma", "beta"),
    ),
    Case(
        "layer",
        "keras GroupNormalization(1)",
        core.layer_norm,
        builtin.layer_norm_keras_group,
        ("gamma", "beta"),
    ),
    Case(
        "group",
        "keras GroupNormalization(4)",
        core.group_norm,
        builtin.group_norm_keras,
        ("gamma", "beta"),
        groups=4,
    ),
    Case("rms", "keras RMSNormalization", core.rms_norm, builtin.rms_norm_keras, ("gamma",)),
    Case("weight", "tf.nn.l2_normalize * g", core.weight_norm, builtin.weight_norm_l2, ("g",)),
)

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


def _max_rel(a: tf.Tensor, b: tf.Tensor) -> float:
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
    name = "v" if case.norm == "weight" else "x"
    inputs = {name: tf.cast(rng.normal(0.5, 2.0, shape), dtype)}
    for p in case.param_names:
        center = 0.0 if p == "beta" else 1.0
        inputs[p] = tf.constant(rng.normal(center, 0.3, [channels]), param_dtype)
    return inputs


def compare(case: Case, inputs: dict[str, tf.Tensor], seed: int = 1) -> ParityResult:
    """Runs custom and built-in on the same inputs and the same cotangent; returns the diffs."""
    names = list(inputs)
    values = [inputs[n] for n in names]
    extra = {} if case.groups is None else {"groups": case.groups}
    first = values[0]
    dy = tf.cast(np.random.default_rng(seed).normal(size=first.shape), first.dtype)

    def run(fn):
        with tf.GradientTape() as tape:
            tape.watch(values)
            y = fn(*values, **extra)
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
        forward_rel=_max_rel(y_custom, y_builtin),
        grad_rel={n: _max_rel(a, b) for n, a, b in zip(names, g_custom, g_builtin)},
    )


def supported(case: Case, dtype: tf.DType) -> bool:
    """The fused op has no float64 kernel."""
    return not (case.reference is builtin.fused_batch_norm and dtype == tf.float64)


def table() -> list[ParityResult]:
    """Every case over the representative shapes and dtypes."""
    results = []
    for case in CASES:
        shapes = KERNEL_SHAPES if case.norm == "weight" else ACTIVATION_SHAPES
        for shape in shapes:
            for dtype in DTYPES:
                if supported(case, dtype):
                    results.append(compare(case, make_inputs(case, shape, dtype)))
    return results


def format_table(results: Sequence[ParityResult], markdown: bool = False) -> str:
    header = [
        "norm",
        "built-in",
        "shape",
        "dtype",
        "fwd max abs",
        "fwd max rel",
        "grad max rel (per input)",
    ]
    rows = []
    for r in results:
        grads = ", ".join(f"d{n} {v:.1e}" for n, v in r.grad_rel.items())
        rows.append(
            [
                r.norm,
                r.builtin_name,
                "x".join(map(str, r.shape)),
                r.dtype,
                f"{r.forward_abs:.1e}",
                f"{r.forward_rel:.1e}",
                grads,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*row) for row in rows])


def main(argv: Sequence[str]) -> int:
    markdown = "--markdown" in argv
    unknown = [a for a in argv if a != "--markdown"]
    if unknown:
        print(
            f"unknown arguments {unknown}; usage: python -m normlab.core.parity [--markdown]",
            file=sys.stderr,
        )
        return 2
    print(
        f"TensorFlow {tf.__version__}; gradients of sum(y * dy), dy ~ N(0, 1); "
        "rel = max|custom - builtin| / max|builtin|"
    )
    print(format_table(table(), markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
