"""The report's tables and curves, read from the runs' files and the analyses.

Every mean over seeds is a stats.Estimate (mean and 95% confidence interval). The runs' curves
are read from their event files with the trainer's own tag names (trainer/summaries.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from normlab.report.stats import Estimate, difference_ci, mean_ci
from normlab.report.suite import COMPLETE, DIVERGED, Outcome
from normlab.trainer import summaries as tags

# Steps to a threshold: the highest multiple of this that every norm's mean validation
# accuracy reaches in the section (so every norm can be timed to it).
THRESHOLD_GRID = 0.005
# "Flat" at the end of training: the validation accuracy's range over the last fifth of the
# run's evaluations, in accuracy units.
PLATEAU_FRACTION = 0.2


def read_scalars(logdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} of every scalar in logdir, one value per step (the last)."""
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("tensors", []):
        by_step = {}
        for event in acc.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.size == 1:
                by_step[event.step] = float(value.reshape(()))
        if by_step:
            steps = np.array(sorted(by_step))
            out[tag] = (steps, np.array([by_step[s] for s in steps]))
    return out


@dataclasses.dataclass
class Run:
    """One run's outcome with its curves: validation accuracy/loss (eval/) and the training
    scalars (train/), read lazily."""

    outcome: Outcome
    root: str
    _train: dict | None = None
    _eval: dict | None = None

    @property
    def config(self):
        return self.outcome.spec.config

    @property
    def complete(self) -> bool:
        return self.outcome.status == COMPLETE

    def scalars(self, sub: str) -> dict:
        cache = "_train" if sub == tags.TRAIN_DIR else "_eval"
        if getattr(self, cache) is None:
            setattr(self, cache, read_scalars(os.path.join(self.root, self.outcome.spec.name, sub)))
        return getattr(self, cache)

    def metric(self, name: str) -> float | None:
        return self.outcome.metrics.get(name) if self.complete else None

    def val_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self.scalars(tags.EVAL_DIR).get(tags.ACCURACY)

    def ms_per_step(self) -> float | None:
        """Median over the logging windows of 1000 / steps_per_sec (robust to the first window,
        which includes tracing)."""
        rates = self.scalars(tags.TRAIN_DIR).get(tags.STEPS_PER_SEC)
        rates = [r for r in rates[1] if r > 0] if rates else []
        return 1000.0 / statistics.median(rates) if rates else None


@dataclasses.dataclass
class NormRow:
    """One norm (and implementation) of a comparison section, over seeds."""

    norm: str
    impl: str
    runs: int
    diverged: int
    test_acc: Estimate | None
    test_loss: Estimate | None
    best_val_acc: Estimate | None
    steps_to_threshold: Estimate | None  # unreached seeds at their last step (censored)
    reached: int
    ms_per_step: Estimate | None
    plateau: Estimate | None  # validation accuracy's range over the last fifth (converged)
    test_accs: list[float]
    steps_list: list[float]


@dataclasses.dataclass
class Comparison:
    """A section comparing norms: rows, the threshold used for steps-to-reach, curves."""

    section: str
    rows: list[NormRow]
    threshold: float | None
    curves: dict  # norm -> [(steps, accuracy, loss)] per seed


def first_reach(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    hits = np.nonzero(values >= level - 1e-12)[0]
    return int(steps[hits[0]]) if len(hits) else None


def comparison(section: str, runs: list[Run], norms: tuple[str, ...]) -> Comparison:
    """Section `section`'s runs (custom impl) grouped by norm, in the order of `norms`."""
    mine = [r for r in runs if section in r.outcome.spec.sections and r.config.norm_impl == "custom"]
    by_norm = {n: [r for r in mine if r.config.norm == n] for n in norms}
    curves, means = {}, {}
    for norm, group in by_norm.items():
        seeds = []
        for r in group:
            val = r.val_curve() if r.complete else None
            if val is not None:
                loss = r.scalars(tags.EVAL_DIR).get(tags.LOSS, (val[0], np.full(len(val[0]), np.nan)))
                seeds.append((val[0], val[1], loss[1]))
        curves[norm] = seeds
        if seeds:
            common = sorted(set.intersection(*(set(s[0].tolist()) for s in seeds)))
            means[norm] = np.mean([np.interp(common, s[0], s[1]) for s in seeds], axis=0)
    peaks = [float(np.max(m)) for m in means.values() if len(m)]
    threshold = math.floor(min(peaks) / THRESHOLD_GRID + 1e-9) * THRESHOLD_GRID if peaks else None
    rows = []
    for norm, group in by_norm.items():
        done = [r for r in group if r.complete]
        reach, best, plateau = [], [], []
        for r in done:
            val = r.val_curve()
            if val is None:
                continue
            best.append(float(np.max(val[1])))
            tail = val[1][-max(2, int(len(val[1]) * PLATEAU_FRACTION)) :]
            plateau.append(float(np.max(tail) - np.min(tail)))
            if threshold is not None:
                reach.append(first_reach(val[0], val[1], threshold))
        reached = [float(s) for s in reach if s is not None]
        # A seed that never reaches the threshold counts at its last step (a lower bound on
        # the steps it would need), so a slow norm is not flattered by dropping its seeds.
        censored = [float(s if s is not None else r.config.train_steps) for s, r in zip(reach, done)]
        accs = [r.metric("test_accuracy") for r in done]
        rows.append(
            NormRow(
                norm=norm,
                impl="custom",
                runs=len(group),
                diverged=sum(r.outcome.status == DIVERGED for r in group),
                test_acc=mean_ci(accs),
                test_loss=mean_ci([r.metric("test_loss") for r in done]),
                best_val_acc=mean_ci(best),
                steps_to_threshold=mean_ci(censored),
                reached=len(reached),
                ms_per_step=mean_ci([r.ms_per_step() for r in done]),
                plateau=mean_ci(plateau),
                test_accs=accs,
                steps_list=censored,
            )
        )
    return Comparison(section, rows, threshold, curves)


@dataclasses.dataclass
class SweepCell:
    """One (norm, setting) cell of a sweep over seeds."""

    norm: str
    setting: float
    runs: int
    diverged: int
    test_acc: Estimate | None
    test_accs: list[float]
    batch_stats_acc: Estimate | None = None  # batch norm: test accuracy with batch statistics
    gap: Estimate | None = None  # inference minus training mode, on the same examples


def sweep(section: str, runs: list[Run], setting: str, bn_eval: dict) -> list[SweepCell]:
    """The cells of a sweep over `setting` ("batch_size" or "learning_rate")."""
    mine = [r for r in runs if section in r.outcome.spec.sections]
    keys = sorted({(r.config.norm, getattr(r.config, setting)) for r in mine})
    cells = []
    for norm, value in keys:
        group = [r for r in mine if (r.config.norm, getattr(r.config, setting)) == (norm, value)]
        done = [r for r in group if r.complete]
        accs = [r.metric("test_accuracy") for r in done]
        cell = SweepCell(
            norm, value, len(group), sum(r.outcome.status == DIVERGED for r in group),
            mean_ci(accs), accs,
        )
        extra = [bn_eval[r.outcome.spec.name] for r in done if r.outcome.spec.name in bn_eval]
        if extra:
            stats_accs = [e["batch_stats_accuracy"] for e in extra]
            cell.batch_stats_acc = mean_ci(stats_accs)
            cell.gap = mean_ci([e["inference_accuracy"] - e["batch_stats_accuracy"] for e in extra])
        cells.append(cell)
    return cells


def cell(cells: list[SweepCell], norm: str, value: float) -> SweepCell | None:
    return next((c for c in cells if c.norm == norm and c.setting == value), None)


def cell_difference(cells, norm_a: str, norm_b: str, value: float) -> Estimate | None:
    """mean accuracy of norm_a minus norm_b at one sweep setting (Welch interval)."""
    a, b = cell(cells, norm_a, value), cell(cells, norm_b, value)
    return difference_ci(a.test_accs, b.test_accs) if a and b else None


@dataclasses.dataclass
class InsideRow:
    """A hidden layer of one norm's first-seed run: first and last summary of each statistic."""

    norm: str
    layer: str
    pre_std: tuple[float, float]
    post_std: tuple[float, float]
    grad_norm: tuple[float, float]


def inside(runs: list[Run], seed: int, norms: tuple[str, ...]) -> tuple[list[InsideRow], dict]:
    """Activation and gradient statistics over training (section cnn's custom runs)."""
    rows, curves = [], {}
    for norm in norms:
        run = next(
            (r for r in runs if "cnn" in r.outcome.spec.sections and r.config.norm == norm
             and r.config.seed == seed and r.config.norm_impl == "custom" and r.complete),
            None,
        )
        if run is None:
            continue
        train = run.scalars(tags.TRAIN_DIR)
        curves[norm] = {t: v for t, v in train.items() if t.startswith(("activation/", "grad_norm/"))}

        def ends(tag):
            values = train.get(tag, (None, [math.nan]))[1]
            return (float(values[0]), float(values[-1]))

        for layer in sorted({t.split("/")[1] for t in curves[norm] if t.startswith("activation/")}):
            rows.append(
                InsideRow(
                    norm, layer,
                    ends(tags.activation(layer, "pre", "std")),
                    ends(tags.activation(layer, "post", "std")),
                    ends(tags.grad_norm(layer)),
                )
            )
    return rows, curves


def cost(throughput: dict) -> dict[str, Estimate]:
    """ms per step of each measured model (arch/norm/impl) over the benchmark's rounds."""
    return {key: mean_ci(v["ms_per_step"]) for key, v in throughput.items()}
