"""Training-loop speed: normlab's Trainer loop against Keras `model.fit`, per batch size.

    python -m bench.loop                                  # batch 2, 4, 16, 128, 512
    python -m bench.loop --batch_sizes 2 128 --rounds 5
    python -m bench.loop --baseline ''                    # without the baseline commit

The same CNN with batch norm (conv 3x3 32 - BN - ReLU - maxpool - conv 3x3 64 - BN - ReLU -
maxpool - dense 128 - BN - ReLU - dense 10) on real Fashion-MNIST images:
* normlab: a Trainer as train.py runs it (its training batches, its loop with summaries every
  50 steps and logs every 100, `--steps_per_loop` as given, default 16), timed by its own
  training clock (train_seconds: the steps, not validation or saving);
* normlab at `--baseline` (default a244822, the start of issue 26): the same Trainer of that
  commit's code, extracted with `git archive` and run in a process of its own
  (bench/baseline_worker.py), which waits on a pipe while the others run;
* with `--old_loop`, also this commit's Trainer with the loop before issue 26 (training batches
  through a tf.data iterator per step, the momentum update op by op), in this process;
* Keras: `model.fit` of bench.keras_fit's model with keras.layers.BatchNormalization, SGD
  momentum 0.9, for each `steps_per_execution` in 1, 8, 32, 128 (the best one is Keras' score),
  timed from on_train_begin to on_train_end.
Every candidate is built and warmed up first; then each round times `--examples` images (at
least 8 steps) of every candidate in a fresh random order (the shared machine's load falls on
all alike). Reported per batch size: median images/s of each candidate; the ratio of normlab's
to Keras' best (the Keras candidate with the highest median) and to the baseline, as the mean
over rounds of the ratio within each round, with a 95% t-interval over rounds. The CPU model and
the load average are printed: ratios differ between CPUs, and a loaded machine compresses them.
Not part of the test suite (timings on a shared machine are too noisy to assert).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
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
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two-sided 95% quantiles of Student's t by degrees of freedom (rounds - 1).
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}  # fmt: skip


def interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% t-interval (the mean alone for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    df = len(values) - 1
    t = _T95[max(k for k in _T95 if k <= df)]
    half = t * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def extract(commit: str, tmp: str) -> str:
    """normlab's source at `commit`, extracted into a new folder of tmp (git archive)."""
    root = os.path.join(tmp, f"normlab-{commit}")
    os.makedirs(root)
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit], capture_output=True,
                             check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


def baseline_candidate(root: str, batch_size: int, steps_per_loop: int, data_dir: str):
    """bench/baseline_worker.py over the code in root: a function training `steps` more steps
    of its Trainer; returns its seconds."""
    worker = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bench", "baseline_worker.py"), "--root", root,
         "--batch_size", str(batch_size), "--steps_per_loop", str(steps_per_loop),
         "--data_dir", data_dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    if worker.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the baseline worker over {root} failed to start")

    def train(steps: int) -> float:
        worker.stdin.write(f"{steps}\n")
        worker.stdin.flush()
        return float(worker.stdout.readline())

    train.close = lambda: (worker.stdin.close(), worker.wait())
    return train


def normlab_candidate(splits, batch_size: int, steps_per_loop: int, tmp: str, old: bool = False):
    """A function training `steps` more steps of one Trainer; returns its seconds. old: the
    loop before issue 26 (tf.data iterator per step, momentum update op by op)."""
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
        os.path.join(tmp, f"b{batch_size}-n{steps_per_loop}{'-old' if old else ''}"),
        splits=splits,
        log=lambda _: None,
    )
    if old:
        trainer.in_graph_input = False
        trainer.optimizer.fused = False

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
    model = keras_fit.compiled_batch_norm_cnn(executions)

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
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = extract(args.baseline, tmp) if args.baseline else None
        for b in args.batch_sizes:
            steps = max(8, args.examples // b)
            candidates = {f"normlab steps_per_loop={n}": normlab_candidate(splits, b, n, tmp)
                          for n in dict.fromkeys(args.steps_per_loop)}  # fmt: skip
            first = next(iter(candidates))
            if args.old_loop:
                candidates["normlab old loop"] = normlab_candidate(
                    splits, b, args.steps_per_loop[0], tmp, old=True
                )
            if root:
                candidates[f"normlab {args.baseline}"] = baseline_candidate(
                    root, b, args.steps_per_loop[0], args.data_dir
                )
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
            for train in candidates.values():
                getattr(train, "close", lambda: None)()
            median = {k: statistics.median(v) for k, v in rates.items()}
            best_keras = max((k for k in median if k.startswith("keras")), key=median.get)
            versus = {"keras_best": best_keras}
            if root:
                versus["baseline"] = f"normlab {args.baseline}"
            out[b] = {
                "images_per_sec": median,
                "per_round": rates,
                "keras_best": best_keras,
                # Per round: normlab's rate / the reference's in the same round.
                "ratios": {
                    f"{k} / {what}": interval([a / r for a, r in zip(rates[k], rates[ref])])
                    for what, ref in versus.items()
                    for k in median
                    if k.startswith("normlab") and k != ref
                },
                "headline": first,
                "steps_per_round": steps,
            }
            print(f"batch {b}: " + ", ".join(f"{k} {v:.0f}" for k, v in median.items()), flush=True)
    return {"batch_sizes": out, "rounds": args.rounds, "examples": args.examples,
            "cpu": machine.cpu_model(), "commit": machine.commit(), "baseline": args.baseline,
            "load_before": load_before, "load_after": os.getloadavg()}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[2, 4, 16, 128, 512])
    parser.add_argument("--steps_per_loop", type=int, nargs="+", default=[Config.steps_per_loop])
    parser.add_argument("--baseline", default="a244822",
                        help="a commit whose Trainer runs as the baseline ('': none)")  # fmt: skip
    parser.add_argument("--old_loop", action="store_true",
                        help="also this commit's Trainer with the loop before issue 26")  # fmt: skip
    parser.add_argument("--examples", type=int, default=2048, help="images per timed sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--out", default="bench/results/loop.json")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"\nCPU: {result['cpu']}  commit {result['commit']}  rounds {args.rounds}  load "
          f"{result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after")  # fmt: skip
    print(f"{'batch':>6}  {'candidate':<34}{'images/s':>10}")
    for b, r in result["batch_sizes"].items():
        for name, rate in r["images_per_sec"].items():
            best = "  (Keras' best)" if name == r["keras_best"] else ""
            print(f"{b:>6}  {name:<34}{rate:>10.0f}{best}")
    print(f"\n{'batch':>6}  {'ratio (mean over rounds, 95% interval)':<60}")
    for b, r in result["batch_sizes"].items():
        for name, (mean, low, high) in r["ratios"].items():
            print(f"{b:>6}  {name:<60}{mean:>6.2f}  [{low:.2f}, {high:.2f}]")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
