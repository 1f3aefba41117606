"""Model-level benchmark: images/s of the full training step for each norm x impl.

    python -m bench.model                    # default CNN, batch 128 (~3 min)
    python -m bench.model --arch=course --batch_size=64 --repeats=15

Times the trainer's own compiled step (trainer.steps.TrainStep: forward, loss, backward,
gradient norms, optimizer update) on one fixed batch, for every --norm x --norm_impl in
every --precisions, and reports the median images/s, the ratio of each step's time to the
no-norm step's (and to float32's) and, for batch norm, custom's time over the fastest
built-in's: all measured in the same run, with the candidates interleaved in a fresh random
order each round so machine noise hits all alike.
Not part of the test suite (timings on a shared machine are too noisy to assert).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
import tensorflow as tf

from normlab import machine
from normlab.core import registry
from normlab.data.synthetic import tiny_splits
from normlab.trainer import summaries
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer


def _candidates(precisions) -> list[tuple[str, str, str, str]]:
    """(precision, norm, impl, backward): every registry norm custom and built-in in every
    precision, and (float32) autodiff for the norms whose custom backward is a closed form."""
    out = []
    for precision in precisions:
        out.append((precision, registry.NONE, "custom", "closed_form"))
        for norm in registry.NORMS.values():
            out.append((precision, norm.name, "custom", "closed_form"))
            if norm.custom.closed_form and precision == "float32":
                out.append((precision, norm.name, "custom", "autodiff"))
            out.append((precision, norm.name, "builtin", "closed_form"))
    return out


def step_runner(trainer, images, labels):
    def call():
        return trainer.train_step(images, labels)

    return call


def interleaved(calls: dict, rounds: int, per_round: int, rng: random.Random) -> dict:
    """Seconds per call of each candidate, one sample per round: every round times `per_round`
    calls of each candidate in a fresh random order (so the shared machine's load falls on all
    alike), reading the last call's loss to wait for it, after one untimed round. The report's
    cost analysis and this benchmark time steps this way; one round's samples pair up."""
    samples = {name: [] for name in calls}
    for name in calls:  # an untimed round first: the first calls of a step run slower
        for _ in range(per_round):
            calls[name]()
    for _ in range(rounds):
        order = list(calls)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(per_round):
                metrics = calls[name]()
            float(metrics[summaries.LOSS])
            samples[name].append((time.perf_counter() - start) / per_round)
    return samples


def run(args) -> dict:
    splits = tiny_splits(n_train=max(args.batch_size, 256), n_val=0, n_test=16)
    rng = random.Random(0)
    images = tf.random.stateless_normal([args.batch_size, 28, 28, 1], seed=[1, 2])
    labels = tf.constant([i % 10 for i in range(args.batch_size)], tf.int32)
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision, norm, impl, backward in _candidates(args.precisions):
            name = f"{precision}/{norm}/{impl}" + ("/autodiff" if backward == "autodiff" else "")
            config = Config(
                precision=precision,
                arch=args.arch,
                norm=norm,
                norm_impl=impl,
                norm_backward=backward,
                batch_size=args.batch_size,
                validation_size=0,
                train_steps=10**9,
            )
            trainer = Trainer(
                config, os.path.join(tmp, name.replace("/", "-")), splits=splits, log=lambda _: None
            )
            for _ in range(3):  # trace, compile, warm up
                float(trainer.train_step(images, labels)[summaries.LOSS])
            steps[name] = trainer
        samples = interleaved(
            {name: step_runner(trainer, images, labels) for name, trainer in steps.items()},
            args.repeats,
            args.calls,
            rng,
        )
    median = {name: statistics.median(s) for name, s in samples.items()}
    rows = {}
    for name, t in median.items():
        precision = name.split("/")[0]
        base = median[f"{precision}/none/custom"]
        rows[name] = {
            "ms": 1e3 * t,
            "images_per_sec": args.batch_size / t,
            "vs_no_norm": t / base,
            "vs_float32": t / median.get(name.replace(precision, "float32", 1), float("nan")),
        }
    first = args.precisions[0]
    return {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "calls_per_sample": args.calls,
        "rows": rows,
        "custom_bn_vs_builtin_bn": median[f"{first}/batch/custom"]
        / median[f"{first}/batch/builtin"],
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": machine.cpu_model(),
            "tensorflow": tf.__version__,
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--arch", default="default", choices=["default", "course"])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--calls", type=int, default=5, help="steps per timed sample")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "mixed_bfloat16", "mixed_float16"],
        choices=["float32", "mixed_bfloat16", "mixed_float16"],
    )
    parser.add_argument("--out", default="bench/results/model.json")
    args = parser.parse_args(argv)
    result = run(args)
    print(
        f"{args.arch} CNN, batch {args.batch_size}, median of {args.repeats} samples x "
        f"{args.calls} steps (interleaved)"
    )
    print(f"CPU: {result['machine']['cpu']}")
    print(f"{'precision/norm/impl':<38}{'ms/step':>9}{'images/s':>10}{'vs none':>9}{'vs f32':>8}")
    for name, row in result["rows"].items():
        print(
            f"{name:<38}{row['ms']:>9.1f}{row['images_per_sec']:>10.0f}"
            f"{row['vs_no_norm']:>9.2f}{row['vs_float32']:>8.2f}"
        )
    print(
        f"custom batch norm step / built-in (fused) batch norm step ({args.precisions[0]}): "
        f"{result['custom_bn_vs_builtin_bn']:.2f}"
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
