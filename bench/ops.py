"""Op benchmark: normlab's normalizations against TensorFlow's built-ins, forward and backward.

    python -m bench.ops                        # the CNN's shapes, float32 and bfloat16
    python -m bench.ops --suite sweep          # batch sizes 8..512 of [N, 28, 28, 32], float32
    python -m bench.ops --norms batch --dtypes float32 --repeats 51 --out /tmp/bn.json

For each norm, shape, dtype and mode (forward; forward+backward = the gradient of
sum(y * dy) with respect to the input and the parameters), every candidate is compiled with
tf.function, warmed up, then timed `--repeats` times; the repeats of all candidates of one
configuration are interleaved in a fresh random order each round, so machine noise (the cores
are shared) hits all of them alike. Reported: the median time per call, the ratio of normlab's
default (closed_form) to the fastest built-in measured in the same run, and the effective
bandwidth: the bytes a minimal implementation must move, divided by the time, against the
machine's memory bandwidth measured in the same run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from typing import Callable, Sequence

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
import numpy as np
import tensorflow as tf

from normlab import machine
from normlab.core import closed_form, registry

# The CNN's activations: the default CNN's two conv blocks and dense layer at batch 128, the
# course's starter network (5x5 conv, 30 filters; dense 100) at batch 64.
CNN_ACTIVATIONS = ((128, 28, 28, 32), (128, 14, 14, 64), (128, 128), (64, 28, 28, 30), (64, 100))
# The kernels weight norm normalizes: default CNN conv 3x3 1->32, 32->64, dense 7*7*64 -> 128,
# 128 -> 10; course net conv 5x5 1->30, dense 14*14*30 -> 100, 100 -> 10.
CNN_KERNELS = (
    (3, 3, 1, 32),
    (3, 3, 32, 64),
    (3136, 128),
    (128, 10),
    (5, 5, 1, 30),
    (5880, 100),
    (100, 10),
)
SWEEP_BATCHES = (8, 32, 128, 512)  # of [N, 28, 28, 32]
SWEEP_KERNELS = ((3, 3, 64, 64), (3, 3, 128, 128), (3, 3, 256, 256), (4096, 1024))
NORMS = tuple(registry.NORMS)  # every norm of the registry
EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One implementation of a norm: fn(x, *params) (fn(v, g) for weight norm)."""

    name: str
    kind: str  # "custom" or "builtin"
    fn: Callable
    jit: bool = False  # compile the whole call with XLA (tf.function(jit_compile=True))
    layer: object = None  # a Keras layer whose variables are the parameters (fn(x) only)


def groups_for(channels: int) -> int:
    """Group norm's group count in the benchmark: the largest divisor of C up to 8."""
    return max(g for g in range(1, 9) if channels % g == 0)


def _keras_batch_norm(shape: Sequence[int]) -> Candidate:
    import keras

    with tf.init_scope():
        layer = keras.layers.BatchNormalization(epsilon=EPS, dtype="float32")
        layer.build([None] + list(shape[1:]))

    def fn(x):
        # Training mode updates the layer's moving statistics too, as it would in a model.
        return tf.cast(layer(tf.cast(x, tf.float32), training=True), x.dtype)

    return Candidate("keras BatchNormalization", "builtin", fn, layer=layer)


def _normalized_axes(norm: registry.Norm, rank: int) -> list[int]:
    """The axes the closed form normalizes (for its variants): batch norm every axis but the
    last; layer and RMS norm every axis but the first; group norm the grouped view's."""
    if norm.moving_statistics:
        return list(range(rank - 1))
    if norm.grouped:
        return list(range(1, rank - 1)) + [rank]
    return list(range(1, rank))


def candidates(name: str, shape: Sequence[int], variants: bool) -> list[Candidate]:
    """normlab's implementation (several compilations) and every built-in of registry norm
    `name`; with `variants`, other forms of the closed form, to justify the default's."""
    norm = registry.NORMS[name]
    groups = groups_for(shape[-1]) if norm.grouped else None
    suffix = f"({groups})" if groups else ""
    builtins = [
        Candidate(b.label + suffix, "builtin", norm.bind(b, eps=EPS, groups=groups))
        for b in norm.builtins
    ]
    if norm.moving_statistics:
        builtins.append(_keras_batch_norm(shape))  # the layer users would pick, with its state
    if not norm.custom.closed_form:
        fn = norm.bind(norm.custom, eps=EPS, groups=groups)
        return [
            Candidate("autodiff", "custom", fn),
            Candidate("autodiff +jit", "custom", fn, jit=True),
        ] + builtins

    def custom(backward):
        return norm.bind(norm.custom, eps=EPS, groups=groups, backward=backward)

    result = [
        Candidate("closed_form", "custom", custom("closed_form")),
        Candidate("closed_form +jit", "custom", custom("closed_form"), jit=True),
        Candidate("autodiff", "custom", custom("autodiff")),
        Candidate("autodiff +jit", "custom", custom("autodiff"), jit=True),
    ]
    if variants:
        axes = _normalized_axes(norm, len(shape))

        def variant(**options):
            if not groups:
                return lambda x, g, b: closed_form.standardize(x, g, b, axes, EPS, **options)[0]
            grouped = list(shape[:-1]) + [groups, shape[-1] // groups]

            def fn(x, g, b):
                y = closed_form.standardize(
                    tf.reshape(x, grouped),
                    tf.reshape(g, grouped[-2:]),
                    tf.reshape(b, grouped[-2:]),
                    axes,
                    EPS,
                    **options,
                )[0]
                return tf.reshape(y, shape)

            return fn

        result += [
            Candidate("closed_form unfused", "custom", variant(compiled=False)),
            Candidate("closed_form two-pass", "custom", variant(two_pass=True)),
        ]
    return result + builtins


def make_inputs(norm: str, shape: Sequence[int], dtype: tf.DType, seed: int = 0):
    """x (or v) and the cotangent dy in `dtype`; parameters in float32, as under mixed
    precision, around their registry initial value (1 for scales, 0 for offsets; weight norm's g
    uniform in [0.5, 2])."""
    rng = np.random.default_rng(seed)
    x = tf.cast(rng.normal(0.5, 2.0, shape), dtype)
    dy = tf.cast(rng.normal(size=shape), dtype)
    c = shape[-1]
    params = [
        tf.constant(
            rng.uniform(0.5, 2.0, c) if p.initial is None else rng.normal(p.initial, 0.3, c),
            tf.float32,
        )
        for p in registry.NORMS[norm].params
    ]
    return x, params, dy


def compile_call(cand: Candidate, mode: str) -> Callable:
    """A tf.function computing the forward, or the forward and all gradients.

    forward+backward returns y as well as the gradients, as a network needs both: otherwise
    XLA (the +jit candidates) would drop the computation of y, which no gradient needs.
    """
    if cand.layer is not None:
        variables = cand.layer.trainable_variables

        def forward(x, dy, *params):
            return cand.fn(x)

        def forward_backward(x, dy, *params):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = cand.fn(x)
            return y, tape.gradient(y, [x] + list(variables), output_gradients=dy)

    else:

        def forward(x, dy, *params):
            return cand.fn(x, *params)

        def forward_backward(x, dy, *params):
            with tf.GradientTape() as tape:
                tape.watch([x, *params])
                y = cand.fn(x, *params)
            return y, tape.gradient(y, [x, *params], output_gradients=dy)

    body = forward if mode == "forward" else forward_backward
    return tf.function(body, jit_compile=cand.jit)


def min_bytes(shape: Sequence[int], dtype: tf.DType, mode: str) -> int:
    """Bytes a minimal implementation moves: forward reads x and writes y (2 tensors);
    forward+backward adds reading x and dy and writing dx (5 tensors). Parameters and
    statistics are per channel or per example, negligible next to x, and not counted."""
    tensors = 2 if mode == "forward" else 5
    return tensors * math.prod(shape) * dtype.size


def time_config(
    calls: dict[str, Callable], args: tuple, repeats: int, rng: np.random.Generator
) -> dict[str, list[float]]:
    """Seconds per call of each compiled candidate, rounds interleaved in random order.

    Each sample times `inner` consecutive calls, enough for ~2 ms, so the timer's resolution
    and per-sample overhead do not dominate tiny shapes.
    """
    inner = {}
    for name, call in calls.items():
        call(*args)  # trace + compile
        call(*args)
        start = time.perf_counter()
        call(*args)
        once = time.perf_counter() - start
        inner[name] = max(1, min(50, int(2e-3 / max(once, 1e-6))))
    samples = {name: [] for name in calls}
    names = list(calls)
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            name = names[i]
            call, n = calls[name], inner[name]
            start = time.perf_counter()
            for _ in range(n):
                call(*args)
            samples[name].append((time.perf_counter() - start) / n)
    return samples


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    bandwidth_before = machine.measure_bandwidth()
    reference_gbps = bandwidth_before["tf_reduce_sum_read_gbps"]
    results, summary = [], []
    for norm in args.norms:
        kernel = registry.NORMS[norm].target == registry.KERNEL
        if args.suite == "cnn":
            shapes = CNN_KERNELS if kernel else CNN_ACTIVATIONS
        else:
            shapes = SWEEP_KERNELS if kernel else tuple((n, 28, 28, 32) for n in args.sweep_batches)
        for shape in shapes:
            for dtype_name in args.dtypes:
                dtype = tf.as_dtype(dtype_name)
                x, params, dy = make_inputs(norm, shape, dtype)
                cands = candidates(norm, shape, args.variants)
                for mode in args.modes:
                    calls, kinds = {}, {}
                    for cand in cands:
                        call = compile_call(cand, mode)
                        try:
                            call(x, dy, *params)
                        except (tf.errors.OpError, TypeError, ValueError) as e:
                            print(
                                f"  skip {cand.name} {dtype_name}: {type(e).__name__}",
                                file=sys.stderr,
                            )
                            continue
                        calls[cand.name], kinds[cand.name] = call, cand.kind
                    samples = time_config(calls, (x, dy, *params), args.repeats, rng)
                    nbytes = min_bytes(shape, dtype, mode)
                    config = dict(norm=norm, shape=list(shape), dtype=dtype_name, mode=mode)
                    medians = {}
                    for name, s in samples.items():
                        med = float(np.median(s))
                        medians[name] = med
                        q1, q3 = np.percentile(s, [25, 75])
                        results.append(
                            dict(
                                config,
                                candidate=name,
                                kind=kinds[name],
                                median_ms=med * 1e3,
                                iqr_ms=float(q3 - q1) * 1e3,
                                min_bytes=nbytes,
                                effective_gbps=nbytes / med / 1e9,
                                fraction_of_bandwidth=nbytes / med / 1e9 / reference_gbps,
                            )
                        )
                    summary.append(dict(config, **_ratios(medians, kinds, norm)))
                    _print_config(config, medians, kinds, nbytes, reference_gbps, summary[-1])
    bandwidth_after = machine.measure_bandwidth()
    return {
        "command": " ".join(["python -m bench.ops"] + sys.argv[1:]),
        "machine": {
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "bandwidth_before": bandwidth_before,
            "bandwidth_after": bandwidth_after,
            "reference_gbps": reference_gbps,
        },
        "bytes_counted": "forward: read x + write y; forward+backward: forward + read x, read dy, "
        "write dx (parameters and statistics not counted)",
        "repeats": args.repeats,
        "results": results,
        "summary": summary,
    }


def _ratios(medians: dict, kinds: dict, norm: str) -> dict:
    """normlab's default against the fastest built-in, and the fastest custom variant."""
    builtins = {n: t for n, t in medians.items() if kinds[n] == "builtin"}
    customs = {n: t for n, t in medians.items() if kinds[n] == "custom"}
    default = "closed_form" if registry.NORMS[norm].custom.closed_form else "autodiff"
    best_builtin = min(builtins, key=builtins.get)
    best_custom = min(customs, key=customs.get)
    return {
        "default": default,
        "fastest_builtin": best_builtin,
        "fastest_custom": best_custom,
        "ratio_default_to_fastest_builtin": medians[default] / builtins[best_builtin],
        "ratio_fastest_custom_to_fastest_builtin": customs[best_custom] / builtins[best_builtin],
    }


def _print_config(config, medians, kinds, nbytes, reference_gbps, ratios):
    shape = "x".join(map(str, config["shape"]))
    print(
        f"\n{config['norm']} norm {shape} {config['dtype']} {config['mode']}  "
        f"(minimal bytes {nbytes / 1e6:.1f} MB; bandwidth {reference_gbps:.1f} GB/s)"
    )
    for name, t in sorted(medians.items(), key=lambda item: item[1]):
        gbps = nbytes / t / 1e9
        print(
            f"  {name:30s} {kinds[name]:8s} {t * 1e3:9.3f} ms  {gbps:6.2f} GB/s "
            f"{100 * gbps / reference_gbps:5.1f}%"
        )
    print(
        f"  ratio {ratios['default']} / {ratios['fastest_builtin']}: "
        f"{ratios['ratio_default_to_fastest_builtin']:.2f};  fastest custom "
        f"({ratios['fastest_custom']}): {ratios['ratio_fastest_custom_to_fastest_builtin']:.2f}"
    )


def _print_summary(report: dict) -> None:
    print("\nSummary: time ratio normlab default / fastest built-in (< 1: normlab is faster)")
    header = f"{'norm':7s} {'shape':16s} {'dtype':9s} {'mode':17s} {'ratio':>6s}  fastest built-in"
    print(header)
    for s in report["summary"]:
        shape = "x".join(map(str, s["shape"]))
        print(
            f"{s['norm']:7s} {shape:16s} {s['dtype']:9s} {s['mode']:17s} "
            f"{s['ratio_default_to_fastest_builtin']:6.2f}  {s['fastest_builtin']}"
        )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("cnn", "sweep"), default="cnn")
    parser.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))
    parser.add_argument(
        "--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"), default=None
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("forward", "forward_backward"),
        default=["forward", "forward_backward"],
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per configuration")
    parser.add_argument(
        "--sweep-batches", type=int, nargs="+", default=list(SWEEP_BATCHES), help="sweep's N"
    )
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the closed form unfused and with two-pass statistics",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("bench", "results", "ops.json"))
    args = parser.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ["float32", "bfloat16"] if args.suite == "cnn" else ["float32"]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    # Each candidate is its own tf.function over the same Python body; TensorFlow would warn
    # about "frequent retracing", which is expected here.
    tf.get_logger().setLevel("ERROR")
    report = run(args)
    _print_summary(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
