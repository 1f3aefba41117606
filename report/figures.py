"""The report's figures, drawn from report.tables' rows with matplotlib's Agg backend.

Means over seeds carry their 95% t interval (a band for curves, bars for points), clipped to
what the quantity can take. Each function writes `<directory>/<name>` and returns the name,
or None when it has nothing to draw.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from normlab.report import stats  # noqa: E402

COLORS = {
    "none": "#555555",
    "batch": "#1f77b4",
    "layer": "#d62728",
    "group": "#9467bd",
    "rms": "#ff7f0e",
    "weight": "#2ca02c",
}
LAYER_COLORS = plt.get_cmap("tab10").colors
DPI = 110


def _save(fig, directory: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, name), dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return name


def curves(rows, directory: str, name: str, title: str, threshold: float) -> str | None:
    """Validation accuracy per norm over steps: mean over seeds and 95% band within [0, 1]."""
    rows = [r for r in rows if r.curves]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    low = 1.0
    for r in rows:
        steps = sorted(set.intersection(*(set(s) for s, _ in r.curves)))
        per_seed = np.array([np.interp(steps, s, a) for s, a in r.curves])
        mean = per_seed.mean(0)
        ax.plot(steps, mean, color=COLORS.get(r.norm), label=f"{r.label} ({len(r.curves)} seeds)")
        if len(per_seed) > 1:
            half = stats.t_quantile(0.975, len(per_seed) - 1) * per_seed.std(0, ddof=1)
            half /= np.sqrt(len(per_seed))
            ax.fill_between(
                steps,
                np.clip(mean - half, 0, 1),
                np.clip(mean + half, 0, 1),
                color=COLORS.get(r.norm),
                alpha=0.2,
            )
        low = min(low, float(np.min(mean[len(mean) // 5 :])) if len(mean) else 1.0)
    ax.axhline(threshold, color="black", lw=0.8, ls=":", label=f"threshold {threshold:.0%}")
    ax.set(title=title, xlabel="training step", ylabel="validation accuracy")
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.legend(fontsize=8)
    return _save(fig, directory, name)


def _band(ax, per_seed, steps, color, label):
    mean = per_seed.mean(0)
    ax.plot(steps, mean, color=color, label=label)
    if len(per_seed) > 1:
        half = stats.t_quantile(0.975, len(per_seed) - 1) * per_seed.std(0, ddof=1)
        ax.fill_between(steps, mean - half / np.sqrt(len(per_seed)),
                        mean + half / np.sqrt(len(per_seed)), color=color, alpha=0.2)  # fmt: skip


def lstm(rows, directory: str, threshold: float) -> str | None:
    """Three panels, mean and 95% band over seeds: training loss (no population statistics
    involved); validation accuracy with population statistics (precise BN for batch norm);
    recurrent batch norm's validation accuracy with precise BN, bias-corrected and plain
    moving averages (the moving averages' warm-up)."""
    rows = [r for r in rows if r.records]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for r in rows:
        color, label = COLORS.get(r.norm), f"{r.label} ({len(r.records)} seeds)"
        for ax, step_key, key in ((axes[0], "train_step", "train_loss"),
                                  (axes[1], "step", "accuracy")):  # fmt: skip
            curves = [(c[step_key], c[key]) for c in (x["curve"] for x in r.records) if c.get(key)]
            if curves:
                steps = sorted(set.intersection(*(set(s) for s, _ in curves)))
                _band(ax, np.array([np.interp(steps, s, v) for s, v in curves]), steps, color,
                      label)  # fmt: skip
        if r.norm == "batch":
            methods = (("accuracy", "precise BN", "-"), ("accuracy_bias_corrected",
                       "bias-corrected moving averages", "--"),
                       ("accuracy_plain", "plain moving averages", ":"))  # fmt: skip
            for key, name, style in methods:
                curves = [(x["curve"]["step"], x["curve"][key]) for x in r.records
                          if x["curve"].get(key)]  # fmt: skip
                if curves:
                    steps = sorted(set.intersection(*(set(s) for s, _ in curves)))
                    mean = np.array([np.interp(steps, s, v) for s, v in curves]).mean(0)
                    axes[2].plot(steps, mean, style, color=color, label=name)
    axes[1].axhline(threshold, color="black", lw=0.8, ls=":", label=f"threshold {threshold:.0%}")
    axes[0].set(title="training loss", xlabel="training step", yscale="log")
    axes[1].set(title="validation accuracy, population statistics", xlabel="training step")
    axes[2].set(title="recurrent batch norm: validation accuracy by method", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    return _save(fig, directory, "lstm.png")


def sweep(panels, directory: str, name: str) -> str | None:
    """Test accuracy against a swept setting per norm (error bars: 95% intervals within
    [0, 1]); the settings are the tick labels; x marks cells where a seed diverged."""
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (title, cells, xlabel) in zip(axes[0], panels):
        values = sorted({v for cells_ in cells.values() for v, _ in cells_})
        for norm, cells_ in cells.items():
            xs = [v for v, r in cells_ if r.acc]
            es = [r.acc for _, r in cells_ if r.acc]
            lo = [e.mean - e.low if e.has_interval else 0 for e in es]
            hi = [e.high - e.mean if e.has_interval else 0 for e in es]
            ax.errorbar(
                xs,
                [e.mean for e in es],
                yerr=[lo, hi],
                color=COLORS.get(norm),
                marker="o",
                capsize=3,
                label=norm,
            )
            bn = [(v, r.gap["val_batch"].mean) for v, r in cells_ if r.gap.get("val_batch")]
            if bn:
                ax.plot(
                    *zip(*bn),
                    "--",
                    color=COLORS.get(norm),
                    label=f"{norm}, mini-batch statistics on validation",
                )
            for v, r in cells_:
                if r.diverged:
                    ax.plot(
                        [v],
                        [0.02],
                        "x",
                        color=COLORS.get(norm),
                        ms=10,
                        clip_on=False,
                        transform=ax.get_xaxis_transform(),
                    )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{v:g}" for v in values])
        lows = [r.acc.low if r.acc.has_interval else r.acc.mean
                for cells_ in cells.values() for _, r in cells_ if r.acc]  # fmt: skip
        lows += [r.gap["val_batch"].mean for cells_ in cells.values() for _, r in cells_
                 if r.gap.get("val_batch")]  # fmt: skip
        ax.set(title=title, xlabel=xlabel, ylabel="test accuracy")
        ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.0)
        ax.legend(fontsize=8)
    return _save(fig, directory, name)


def twins(twin_results: dict, directory: str) -> str | None:
    """Relative parameter distance of the built-in and the one-ulp twins to the custom model."""
    if not twin_results:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key, twin in twin_results.items():
        norm = key.split()[-1]
        for which, style in (("builtin", "-"), ("perturbed", ":")):
            values = np.maximum(twin["distance"][which], 1e-12)
            color = COLORS.get(norm) if key.startswith("CNN") else None
            ax.plot(twin["step"], values, style, color=color, label=f"{key}, {which}")
    ax.set(
        xlabel="step",
        ylabel="||theta - theta_custom|| / ||theta_custom||",
        yscale="log",
        title="In lock step: built-in (solid) and one-ulp control (dotted)",
    )
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, directory, "twins.png")


def inside(rows: list[dict], directory: str) -> str | None:
    """Per norm (x) and hidden layer (one colour each): first (hollow) and last (filled) value
    of the activation std before and after the norm and of the gradient norm."""
    if not rows:
        return None
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = (
        ("pre_std", "std before the norm"),
        ("post_std", "std after the norm"),
        ("grad_norm", "gradient norm"),
    )
    for ax, (key, title) in zip(axes, keys):
        for r in rows:
            if key not in r:
                continue
            i, j = norms.index(r["norm"]), layers.index(r["layer"])
            x = i + (j - (len(layers) - 1) / 2) * 0.12
            color = LAYER_COLORS[j % len(LAYER_COLORS)]
            first, last = r[key]
            ax.plot([x, x], [first, last], color=color, lw=1)
            ax.plot([x], [first], "o", mfc="none", color=color)
            ax.plot([x], [last], "o", color=color, label=r["layer"] if i == 0 or key else None)
        ax.set_xticks(range(len(norms)), norms)
        ax.set(title=f"{title}: first (hollow), last (filled)", yscale="log")
    handles = [
        plt.Line2D([], [], color=LAYER_COLORS[j % 10], marker="o", label=layer)
        for j, layer in enumerate(layers)
    ]
    axes[2].legend(handles=handles, fontsize=8, title="layer")
    return _save(fig, directory, "inside.png")


def cost(estimates: dict, directory: str) -> str | None:
    """ms per training step of each norm's CNN, 95% intervals over the interleaved rounds."""
    if not estimates:
        return None
    keys = list(estimates)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(keys) + 1.5))
    for i, key in enumerate(keys):
        e = estimates[key]
        xerr = [[e.mean - e.low], [e.high - e.mean]] if e.has_interval else None
        ax.barh(i, e.mean, xerr=xerr, color=COLORS.get(key), alpha=0.85, capsize=3)
    ax.set_yticks(range(len(keys)), keys)
    ax.set(xlabel="ms per training step", title="Cost per step (interleaved rounds)")
    return _save(fig, directory, "cost.png")
