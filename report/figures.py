"""The report's figures: one PNG per function, drawn with matplotlib's Agg backend.

Each function takes the tables or curves, writes `<directory>/<name>.png` and returns the file
name, or returns None when it has nothing to draw (a preset without that section's runs).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine

import matplotlib.pyplot as plt
import numpy as np

from normlab.report.results import Curves, Tables

COLORS = {
    "none": "#555555",
    "batch": "#1f77b4",
    "layer": "#d62728",
    "weight": "#2ca02c",
    "group": "#9467bd",
}
DPI = 110


def _save(fig, directory: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(directory, name), dpi=DPI)
    plt.close(fig)
    return name


def _mark_diverged(ax, xs: list, norm: str) -> None:
    """Crosses at the bottom edge of the axes (not at accuracy 0, which would squash the
    accuracies that matter into the top of the plot)."""
    ax.plot(
        xs,
        [0.03] * len(xs),
        "x",
        color=COLORS.get(norm),
        markersize=10,
        clip_on=False,
        transform=ax.get_xaxis_transform(),
    )


def validation_curves(curves: Curves, directory: str) -> str | None:
    """Section 1: validation accuracy and loss, mean over seeds, band from min to max."""
    if not any(curves.val.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for norm, seeds in curves.val.items():
        if not seeds:
            continue
        steps = sorted(set.intersection(*(set(s[0].tolist()) for s in seeds)))
        for ax, index in zip(axes, (1, 2)):
            stacked = np.array([np.interp(steps, s[0], s[index]) for s in seeds])
            ax.plot(steps, stacked.mean(0), color=COLORS.get(norm), label=f"{norm} ({len(seeds)})")
            if len(seeds) > 1:
                ax.fill_between(
                    steps, stacked.min(0), stacked.max(0), color=COLORS.get(norm), alpha=0.2
                )
    axes[0].set(xlabel="step", ylabel="validation accuracy", title="validation accuracy")
    axes[1].set(xlabel="step", ylabel="validation loss", title="validation loss", yscale="log")
    lows = [s[1].max() for seeds in curves.val.values() for s in seeds]
    if lows:
        axes[0].set_ylim(max(0.0, min(lows) - 0.1), None)
    axes[0].legend(title="norm (seeds)")
    return _save(fig, directory, "fig1_validation.png")


def impl_curves(curves: Curves, directory: str) -> str | None:
    """Section 2b: custom (solid) vs built-in (dashed) validation accuracy and training loss."""
    norms = [n for n, impls in curves.impl.items() if len(impls) == 2]
    if not norms:
        return None
    fig, axes = plt.subplots(2, len(norms), figsize=(3.3 * len(norms), 6), squeeze=False)
    for col, norm in enumerate(norms):
        for impl, style in (("custom", "-"), ("builtin", "--")):
            tags = curves.impl[norm][impl]
            for row, tag in enumerate(("eval/val_accuracy", "train/loss")):
                if tag in tags:
                    axes[row][col].plot(
                        *tags[tag], style, color=COLORS.get(norm), label=impl, alpha=0.85
                    )
        axes[0][col].set(title=norm, xlabel="step", ylabel="validation accuracy")
        axes[1][col].set(xlabel="step", ylabel="training loss", yscale="log")
        axes[0][col].legend()
    return _save(fig, directory, "fig2_custom_vs_builtin.png")


def twin_distances(curves: Curves, directory: str) -> str | None:
    """Section 2b: relative parameter distance of each twin to the custom model, per step."""
    if not curves.twins:
        return None
    fig, axes = plt.subplots(
        1, len(curves.twins), figsize=(3.3 * len(curves.twins), 3.6), squeeze=False
    )
    for ax, (norm, twin) in zip(axes[0], curves.twins.items()):
        steps = np.array(twin["steps"])
        for name, style in (("builtin", "-"), ("perturbed", ":")):
            d = np.array(twin["distance"][name], dtype=float)
            ax.plot(
                steps[d > 0],
                d[d > 0],
                style,
                color=COLORS.get(norm),
                label="built-in" if name == "builtin" else "custom, 1 ulp moved",
            )
        ax.set(
            title=norm,
            xlabel="step",
            ylabel="||theta - theta_custom|| / ||theta_custom||",
            yscale="log",
        )
        ax.legend(fontsize=8)
    return _save(fig, directory, "fig2b_twin_distance.png")


def batch_size(tables: Tables, directory: str) -> str | None:
    """Section 3: test accuracy against batch size; batch norm's two evaluation modes."""
    if not tables.batch:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for norm in dict.fromkeys(r.norm for r in tables.batch):
        rows = sorted((r for r in tables.batch if r.norm == norm), key=lambda r: r.batch_size)
        ok = [r for r in rows if r.test_acc is not None]
        axes[0].plot(
            [r.batch_size for r in ok],
            [r.test_acc for r in ok],
            "o-",
            color=COLORS.get(norm),
            label=norm,
        )
        bad = [r.batch_size for r in rows if r.status == "diverged"]
        if bad:
            _mark_diverged(axes[0], bad, norm)
    axes[0].set(
        xscale="log",
        xlabel="batch size",
        ylabel="test accuracy",
        title="test accuracy (x at the bottom: diverged)",
    )
    sizes = sorted({r.batch_size for r in tables.batch})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
    axes[0].legend()
    bn = sorted(
        (r for r in tables.batch if r.batch_stats_acc is not None), key=lambda r: r.batch_size
    )
    if bn:
        sizes = [r.batch_size for r in bn]
        axes[1].plot(
            sizes,
            [r.inference_acc for r in bn],
            "o-",
            color=COLORS["batch"],
            label="moving statistics (inference)",
        )
        axes[1].plot(
            sizes,
            [r.batch_stats_acc for r in bn],
            "s--",
            color=COLORS["batch"],
            label="test-batch statistics (training mode)",
        )
        axes[1].legend()
    axes[1].set(
        xlabel="batch size (training and test batches)",
        ylabel="test accuracy",
        title="batch norm: inference vs training mode",
    )
    return _save(fig, directory, "fig3_batch_size.png")


def learning_rate(tables: Tables, directory: str) -> str | None:
    """Section 4: test accuracy against peak learning rate; diverged runs as crosses at the bottom."""
    if not tables.lr:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for norm in dict.fromkeys(r.norm for r in tables.lr):
        rows = sorted((r for r in tables.lr if r.norm == norm), key=lambda r: r.lr)
        ok = [r for r in rows if r.test_acc is not None]
        ax.plot(
            [r.lr for r in ok], [r.test_acc for r in ok], "o-", color=COLORS.get(norm), label=norm
        )
        bad = [r.lr for r in rows if r.status == "diverged"]
        if bad:
            _mark_diverged(ax, bad, norm)
    ax.set(
        xscale="log",
        xlabel="peak learning rate (SGD, momentum 0.9)",
        ylabel="test accuracy",
        title="learning-rate sweep (x at the bottom: diverged)",
    )
    ax.legend()
    return _save(fig, directory, "fig4_learning_rate.png")


def activations(curves: Curves, directory: str) -> str | None:
    """Section 5: per-layer activation std before and after the norm, and mean after it."""
    if not curves.inside:
        return None
    layers = sorted(
        {
            t.split("/")[1]
            for tags in curves.inside.values()
            for t in tags
            if t.startswith("activation/")
        },
        key=lambda name: (name.startswith("dense"), name),
    )
    stats = (
        ("pre_std", "std before norm"),
        ("post_std", "std after norm"),
        ("post_mean", "mean after norm"),
    )
    fig, axes = plt.subplots(len(layers), 3, figsize=(12, 2.8 * len(layers)), squeeze=False)
    for row, layer in enumerate(layers):
        for col, (stat, label) in enumerate(stats):
            ax = axes[row][col]
            for norm, tags in curves.inside.items():
                tag = f"activation/{layer}/{stat}"
                if tag in tags:
                    ax.plot(*tags[tag], color=COLORS.get(norm), label=norm)
            ax.set(title=f"{layer}: {label}", xlabel="step")
            if stat.endswith("std"):
                ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    return _save(fig, directory, "fig5_activations.png")


def grad_norms(curves: Curves, directory: str) -> str | None:
    """Section 5: gradient L2 norm of each layer's variables (and all of them) over training."""
    if not curves.inside:
        return None
    # The layers every norm has (convs, dense1, logits); norm layers' own gamma/beta exist
    # only under batch, layer and group norm.
    layers = ["global"] + sorted(
        {
            t.split("/")[1]
            for tags in curves.inside.values()
            for t in tags
            if t.startswith("grad_norm/")
            and t != "grad_norm/global"
            and not t.split("/")[1].endswith("_norm")
        },
        key=lambda name: (name.startswith("logits"), name.startswith("dense"), name),
    )
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for norm, tags in curves.inside.items():
            tag = f"grad_norm/{layer}"
            if tag in tags:
                ax.plot(*tags[tag], color=COLORS.get(norm), label=norm)
        ax.set(title=f"grad norm: {layer}", xlabel="step", yscale="log")
    axes[0][0].legend(fontsize=8)
    return _save(fig, directory, "fig5_grad_norms.png")


def cost(tables: Tables, directory: str) -> str | None:
    """Section 6: median training images per second of each norm and implementation."""
    rows = [r for r in tables.cost if r.rate]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r.norm}\n{r.impl}" for r in rows]
    bars = ax.bar(labels, [r.best for r in rows], color=[COLORS.get(r.norm) for r in rows])
    for bar, r in zip(bars, rows):
        if r.impl == "builtin":
            bar.set_hatch("//")
    ax.set(ylabel="training images / s", title="throughput (hatched: built-in)")
    return _save(fig, directory, "fig6_cost.png")


def draw_all(tables: Tables, curves: Curves, directory: str) -> dict[str, str]:
    """Every figure that has data: {figure key: file name in directory}."""
    out = {}
    for key, make in (
        ("validation", lambda: validation_curves(curves, directory)),
        ("impl", lambda: impl_curves(curves, directory)),
        ("twins", lambda: twin_distances(curves, directory)),
        ("batch", lambda: batch_size(tables, directory)),
        ("lr", lambda: learning_rate(tables, directory)),
        ("activations", lambda: activations(curves, directory)),
        ("grads", lambda: grad_norms(curves, directory)),
        ("cost", lambda: cost(tables, directory)),
    ):
        name = make()
        if name:
            out[key] = name
    return out
