"""Training-loop speed: normlab's Trainer loop against Keras `model.fit`, per batch size.

    python -m bench.loop                                  # batch 2, 4, 16, 128, 512 (~6 min)
    python -m bench.loop --batch_sizes 2 128 --rounds 5

The same CNN with batch norm (conv 3x3 32 - BN - ReLU - maxpool - conv 3x3 64 - BN - ReLU -
maxpool - dense 128 - BN - ReLU - dense 10) on real Fashion-MNIST images:
* normlab: a Trainer as train.py runs it (its data pipeline, its loop with summaries every
  50 steps and logs every 100, `--steps_per_loop` as given, default and 1), timed by its own
  training clock (train_seconds: the steps, not validation or saving);
* Keras: `model.fit` of bench.keras_fit's model with keras.layers.BatchNormalization, SGD
  momentum 0.9, for each `steps_per_execution` in 1, 8, 32, 128 (the best one is Keras' score),
  timed from on_train_begin to on_train_end.
Every candidate is built and warmed up first; then each round times `--examples` images of
every candidate in a fresh random order (the shared machine's load falls on all alike).
Reported per batch size: median images/s of each candidate and the ratio of normlab's to
Keras' best. The CPU model is printed: ratios differ between CPUs.
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
import keras
import numpy as np

from normlab import data, machine
from normlab.bench import keras_fit
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer

KERAS_EXECUTIONS = (1, 8, 32, 128)


def normlab_candidate(splits, batch_size: int, steps_per_loop: int, tmp: str):
    """A function training `steps` more steps of one Trainer; returns its seconds."""
    extra = {"steps_per_loop": steps_per_loop} if hasattr(Config, "steps_per_loop") else {}
    config = Config(
        norm="batch",
        batch_size=batch_size,
        train_steps=10**8,
        eval_every=10**8,
        checkpoint_every=10**8,
        histogram_every=10**8,
        validation_size=0,
        **extra,
    )
    trainer = Trainer(
        config,
        os.path.join(tmp, f"b{batch_size}-n{steps_per_loop}"),
        splits=splits,
        log=lambda _: None,
    )

    def train(steps: int) -> float:
        before = float(trainer.train_seconds.numpy())
        trainer.total_steps = trainer.current_step + steps
        trainer.train()
        return float(trainer.train_seconds.numpy()) - before

    return train


class _Clock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def keras_candidate(x, y, batch_size: int, executions: int):
    model = keras_fit.build(keras.layers, "batch")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=executions,
    )

    def train(steps: int) -> float:
        n = steps * batch_size
        clock = _Clock()
        model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False,
                  callbacks=[clock])  # fmt: skip
        return clock.seconds

    return train


def run(args) -> dict:
    splits = data.load("fashion_mnist", args.data_dir or None, 0)
    x = ((splits.train_x / 255.0 - splits.pixel_mean) / splits.pixel_std).astype(np.float32)
    y = splits.train_y.astype(np.int32)
    rng = random.Random(0)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch_sizes:
            steps = max(8, args.examples // b)
            candidates = {f"normlab steps_per_loop={n}": normlab_candidate(splits, b, n, tmp)
                          for n in dict.fromkeys(args.steps_per_loop)}  # fmt: skip
            candidates.update(
                {
                    f"keras steps_per_execution={e}": keras_candidate(x, y, b, e)
                    for e in KERAS_EXECUTIONS
                }  # fmt: skip
            )
            for train in candidates.values():  # trace, compile, warm up
                train(min(steps, 256))
            rates = {name: [] for name in candidates}
            for _ in range(args.rounds):
                order = list(candidates)
                rng.shuffle(order)
                for name in order:
                    rates[name].append(steps * b / candidates[name](steps))
            median = {k: statistics.median(v) for k, v in rates.items()}
            best_keras = max((k for k in median if k.startswith("keras")), key=median.get)
            out[b] = {
                "images_per_sec": median,
                "keras_best": best_keras,
                "ratios": {
                    k: median[k] / median[best_keras] for k in median if k.startswith("normlab")
                },
                "steps_per_round": steps,
            }
            print(f"batch {b}: " + ", ".join(f"{k} {v:.0f}" for k, v in median.items()), flush=True)
    return {"batch_sizes": out, "rounds": args.rounds, "cpu": machine.cpu_model(),
            "commit": machine.commit(), "load_after": os.getloadavg()}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[2, 4, 16, 128, 512])
    parser.add_argument("--steps_per_loop", type=int, nargs="+", default=[Config.steps_per_loop, 1]
                        if hasattr(Config, "steps_per_loop") else [1])  # fmt: skip
    parser.add_argument("--examples", type=int, default=4096, help="images per timed sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--out", default="bench/results/loop.json")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"\nCPU: {result['cpu']}  commit {result['commit']}  rounds {args.rounds}")
    print(f"{'batch':>6}  {'candidate':<34}{'images/s':>10}{'vs Keras best':>15}")
    for b, r in result["batch_sizes"].items():
        for name, rate in r["images_per_sec"].items():
            ratio = rate / r["images_per_sec"][r["keras_best"]]
            print(f"{b:>6}  {name:<34}{rate:>10.0f}{ratio:>15.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
