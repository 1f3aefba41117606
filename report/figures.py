"""The report's figures: one PNG per function, drawn with matplotlib's Agg backend.

Every mean over seeds is drawn with its 95% confidence interval (a band for curves, error bars
for points). Each function writes `<directory>/<name>.png` and returns the file name, or None
when it has nothing to draw.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from normlab.report import stats  # noqa: E402

COLORS = {
    "none": "#555555",
    "batch": "#1f77b4",
    "layer": "#d62728",
    "group": "#9467bd",
    "rms": "#ff7f0e",
    "weight": "#2ca02c",
}
DPI = 110


def _save(fig, directory: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, name), dpi=DPI)
    plt.close(fig)
    return name


def _band(ax, steps, per_seed: np.ndarray, color, label) -> None:
    """Mean over seeds (rows) with the 95% t interval at each step."""
    mean = per_seed.mean(0)
    ax.plot(steps, mean, color=color, label=label)
    if len(per_seed) > 1:
        half = (
            stats.t_quantile(0.975, len(per_seed) - 1)
            * per_seed.std(0, ddof=1)
            / np.sqrt(len(per_seed))
        )
        ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.2)


def validation_curves(panels: list[tuple[str, object]], directory: str, name: str) -> str | None:
    """Validation accuracy and loss per norm for each (title, Comparison) panel."""
    panels = [(t, c) for t, c in panels if c is not None and any(c.curves.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 7), squeeze=False)
    for col, (title, comparison) in enumerate(panels):
        lows = []
        for norm, seeds in comparison.curves.items():
            if not seeds:
                continue
            steps = sorted(set.intersection(*(set(s[0].tolist()) for s in seeds)))
            for row, index in ((0, 1), (1, 2)):
                per_seed = np.array([np.interp(steps, s[0], s[index]) for s in seeds])
                _band(axes[row][col], steps, per_seed, COLORS.get(norm), f"{norm} ({len(seeds)})")
            lows.append(min(float(np.max(s[1])) for s in seeds))
        axes[0][col].set(title=f"{title}: validation accuracy", xlabel="step", ylabel="accuracy")
        if lows:
            axes[0][col].set_ylim(max(0.0, min(lows) - 0.08), None)
        axes[1][col].set(title=f"{title}: validation loss", xlabel="step", ylabel="loss",
                         yscale="log")
        axes[0][col].legend(title="norm (seeds)", fontsize=8)
    return _save(fig, directory, name)


def _errorbar(ax, xs, estimates, color, label) -> None:
    xs = [x for x, e in zip(xs, estimates) if e is not None]
    es = [e for e in estimates if e is not None]
    if not es:
        return
    means = np.array([e.mean for e in es])
    low = np.array([e.mean - e.low if e.n > 1 else 0.0 for e in es])
    high = np.array([e.high - e.mean if e.n > 1 else 0.0 for e in es])
    ax.errorbar(xs, means, yerr=[low, high], color=color, marker="o", capsize=3, label=label)


def sweeps(panels: list[tuple[str, list, str]], directory: str, name: str) -> str | None:
    """Test accuracy against a swept setting, per norm, 95% intervals as error bars; crosses at
    the bottom mark settings where a seed diverged; batch norm's batch-statistics accuracy
    dashed."""
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, cells, xlabel) in zip(axes[0], panels):
        for norm in dict.fromkeys(c.norm for c in cells):
            mine = [c for c in cells if c.norm == norm]
            xs = [c.setting for c in mine]
            _errorbar(ax, xs, [c.test_acc for c in mine], COLORS.get(norm), norm)
            if any(c.batch_stats_acc for c in mine):
                ests = [c.batch_stats_acc for c in mine]
                ax.plot([x for x, e in zip(xs, ests) if e], [e.mean for e in ests if e], "--",
                        color=COLORS.get(norm), label=f"{norm}, batch statistics at test")
            crosses = [c.setting for c in mine if c.diverged]
            if crosses:
                ax.plot(crosses, [0.03] * len(crosses), "x", color=COLORS.get(norm),
                        markersize=10, clip_on=False, transform=ax.get_xaxis_transform())
        ax.set(title=title, xlabel=xlabel, ylabel="test accuracy", xscale="log")
        ax.legend(fontsize=8)
    return _save(fig, directory, name)


def twins(twin_results: dict, directory: str) -> str | None:
    """Relative parameter distance of the built-in and one-ulp twins to the custom model."""
    if not twin_results:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for norm, twin in twin_results.items():
        steps = twin["steps"][1:]
        for key, style in (("builtin", "-"), ("perturbed", ":")):
            values = np.maximum(twin["distance"][key][1:], 1e-12)
            ax.plot(steps, values, style, color=COLORS.get(norm), label=f"{norm} {key}")
    ax.set(xlabel="step", ylabel="||theta - theta_custom|| / ||theta_custom||", yscale="log",
           title="Trained in lock step: built-in (solid) and one-ulp control (dotted)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, directory, "twins.png")


def inside(curves: dict, directory: str) -> str | None:
    """Each hidden layer's activation std before and after its norm, and its gradient norm."""
    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for norm, tags in curves.items():
        for tag, (steps, values) in tags.items():
            parts = tag.split("/")
            if tag.startswith("activation/") and parts[2] in ("pre_std", "post_std"):
                ax = axes[0] if parts[2] == "pre_std" else axes[1]
            elif tag.startswith("grad_norm/") and parts[1] != "global" and not parts[1].endswith("_norm"):
                ax = axes[2]
            else:
                continue
            ax.plot(steps, values, color=COLORS.get(norm), alpha=0.7, label=f"{norm} {parts[1]}")
    for ax, title in zip(axes, ("std before the norm", "std after the norm", "gradient norm")):
        ax.set(title=title, xlabel="step", yscale="log")
    axes[2].legend(fontsize=6, ncol=2)
    return _save(fig, directory, "inside.png")


def cost(estimates: dict, directory: str) -> str | None:
    """ms per training step of each model (interleaved benchmark), 95% intervals."""
    if not estimates:
        return None
    keys = sorted(estimates)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(keys) + 1.5))
    for i, key in enumerate(keys):
        e = estimates[key]
        norm = key.split("/")[1]
        xerr = [[e.mean - e.low], [e.high - e.mean]] if e.n > 1 else None
        ax.barh(i, e.mean, xerr=xerr, color=COLORS.get(norm), alpha=0.8, capsize=3)
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    ax.set(xlabel="ms per training step (batch of the runs)", title="Cost per step")
    return _save(fig, directory, "cost.png")
