"""REPORT.md: findings first, then one section per question with its settings, table, figure."""

from __future__ import annotations

import dataclasses
import math
import os

from normlab.report import findings as findings_lib
from normlab.report.experiments import (
    SECTION_BATCH,
    SECTION_IMPL,
    SECTION_LR,
    SECTION_NORMS,
    Preset,
)
from normlab.report.results import DISTANCE_LEVELS, THRESHOLD_GRID, Tables, mean_std
from normlab.report.suite import DIVERGED, Outcome, duration

REPORT_FILE = "REPORT.md"
FIGURES_DIR = "figures"


@dataclasses.dataclass
class Context:
    """Everything the report prints besides the tables."""

    command: str
    regenerate: str
    preset: Preset
    settings: dict[str, str]
    machine: dict[str, str]
    outcomes: list[Outcome]
    timing: dict[str, float]
    figures: dict[str, str]
    root: str
    out_dir: str


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x) -> str:
    return findings_lib.pct(x)


def _mean_pm(values: list[float], scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{digits}f}{unit}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _figure(ctx: Context, key: str, caption: str) -> str:
    name = ctx.figures.get(key)
    if not name:
        return ""
    rel = os.path.join(FIGURES_DIR, name)
    return f"\n![{caption}]({rel})\n\n*{caption}* (`{rel}`)\n"


def _header(ctx: Context, tables: Tables) -> str:
    t = ctx.timing
    m = ctx.machine
    runs = ctx.outcomes
    diverged = sum(o.status == DIVERGED for o in runs)
    return "\n".join(
        [
            "# normlab: which normalization, and why — report of findings",
            "",
            (
                f"Generated {m['date']} by `{ctx.command}` (preset **{ctx.preset.name}**: "
                f"{ctx.preset.description}). Every number below is read from the runs under "
                f"`{ctx.root}` by the code in `report/`; the findings text is computed from the "
                "tables, not written by hand."
            ),
            "",
            f"Regenerate this file from the same runs without training: `{ctx.regenerate}`.",
            "",
            "## How it was made",
            "",
            f"- Command: `{ctx.command}`; preset `{ctx.preset.name}`.",
            (
                f"- Runs: {len(runs)} ({len(runs) - diverged} complete, {diverged} diverged); "
                f"one trainer model_dir each under `{ctx.root}/` (listed at the end)."
            ),
            (
                f"- Wall time of the suite: **{duration(t['total'])}** = training runs "
                f"{duration(t['runs'])} (each run's measured time, summed over every session that "
                f"trained it) + analyses {duration(t['analyses'])} + loading, reading and writing "
                f"{duration(t['overhead'])} (this invocation). This invocation took "
                f"{duration(t['invocation'])}."
            ),
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} memory; {m['os']}.",
            (
                f"- Python {m['python']}, TensorFlow {m['tensorflow']}, NumPy {m['numpy']}; oneDNN "
                f"{m['onednn']}; code at commit {m['commit']}."
            ),
            (
                f"- Common settings: {ctx.settings['model']}. Deterministic ops; data order and "
                "initial weights are pure functions of the seed."
            ),
        ]
    )


def _section1(ctx: Context, t: Tables) -> str:
    rows = []
    for r in t.norms:
        reached = [s for s in r.steps_to_threshold if s is not None]
        secs = [s for s in r.seconds_to_threshold if s is not None]
        rows.append(
            [
                r.norm,
                f"{len(r.test_acc)}/{r.seeds}"
                + (f" ({r.diverged} diverged)" if r.diverged else ""),
                _mean_pm(r.test_acc, unit="%"),
                _mean_pm(r.test_loss, scale=1.0, digits=4),
                _mean_pm(r.best_val_acc, unit="%"),
                (
                    _mean_pm([float(s) for s in reached], 1.0, 0)
                    + f" ({len(reached)}/{len(r.test_acc)})"
                )
                if reached
                else "not reached",
                _mean_pm(secs, 1.0, 1) + " s" if secs else "-",
                _mean_pm(r.seconds_per_step, 1000.0, 1) + " ms" if r.seconds_per_step else "-",
            ]
        )
    threshold = (
        f"{_pct(t.threshold)} (the highest multiple of {THRESHOLD_GRID * 100:g}% that every "
        "norm's mean validation curve reaches)"
        if t.threshold is not None
        else "none (no validation curves)"
    )
    return "\n".join(
        [
            "## 1. With and without normalization",
            "",
            f"Settings: {ctx.settings[SECTION_NORMS]}.",
            "",
            (
                f"Threshold for 'steps to reach': validation accuracy {threshold}. Training time to "
                "reach it = steps x the run's median seconds per step (train/steps_per_sec over its "
                "logging windows; those include the periodic validation)."
            ),
            "",
            "**Table 1.** Mean ± sample std over seeds.",
            "",
            _table(
                [
                    "norm",
                    "seeds done",
                    "test accuracy",
                    "test loss",
                    "best val accuracy",
                    "steps to threshold (seeds reaching)",
                    "training time to threshold",
                    "time per step",
                ],
                rows,
            ),
            _figure(
                ctx,
                "validation",
                "Figure 1. Validation accuracy and loss; line: mean over seeds, band: min to max",
            ),
        ]
    )


def _section2(ctx: Context, t: Tables) -> str:
    parts = [
        "## 2. Custom vs TensorFlow built-in",
        "",
        "### 2a. The same weights, the same batch",
        "",
        (
            "Settings: for each norm, the trained weights of section 1's custom run (seed "
            f"{ctx.preset.seeds[0]}) at its last checkpoint and that run's first training batch. "
            "Each norm layer gets its real input (the custom network's activations, replayed in the "
            "CNN's order); the built-in is the one `--norm_impl=builtin` uses. Forward: max |custom "
            "- built-in| (abs) and that over max |built-in| (rel). Gradients of sum(y * dy) with a "
            "fixed dy ~ N(0, 1) (`core.parity.compare`), max |difference| / max |built-in| per "
            "input. Weight norm rows compare the kernels g * v / ||v||. Last column: each "
            "output's max abs error against a NumPy float64 two-pass reference on the same input "
            "(`report.analyses.reference64`): it tells whose rounding a difference is."
        ),
        "",
    ]
    rows = []
    for result in t.parity:
        for r in result["layers"]:
            grads = ", ".join(f"d{k} {v:.1e}" for k, v in r["grad_rel"].items())
            rows.append(
                [
                    result["norm"],
                    r["layer"],
                    r["builtin"],
                    "x".join(map(str, r["shape"])),
                    f"{r['forward_abs']:.1e}",
                    f"{r['forward_rel']:.1e}",
                    grads,
                    f"{r['custom_err64']:.1e} / {r['builtin_err64']:.1e}",
                ]
            )
    if rows:
        parts += [
            "**Table 2a.** Per norm layer.",
            "",
            _table(
                [
                    "norm",
                    "layer",
                    "built-in",
                    "input shape",
                    "fwd max abs",
                    "fwd max rel",
                    "grad max rel",
                    "fwd max abs error vs float64 (custom / built-in)",
                ],
                rows,
            ),
            "",
            (
                "**Table 2a'.** The whole network: the custom model vs a built-in model holding the "
                "same weights, on the same batch; gradients of the mean cross-entropy. The control: the "
                "same custom model with every weight moved by one float32 ulp, against custom: how "
                "much rounding-sized changes move that gradient."
            ),
            "",
            _table(
                [
                    "norm",
                    "logits max abs (training)",
                    "logits max abs (inference)",
                    "loss abs diff",
                    "grad max rel (worst variable)",
                    "one-ulp control, same variable",
                ],
                [
                    [
                        r["norm"],
                        f"{r['model']['logits_abs_training']:.1e}",
                        f"{r['model']['logits_abs_inference']:.1e}",
                        f"{r['model']['loss_abs']:.1e}",
                        f"{r['model']['grad_rel_max']:.1e} ({r['model']['grad_rel_worst']})",
                        f"{r['model'].get('control_grad_rel_worst', float('nan')):.1e}",
                    ]
                    for r in t.parity
                ],
            ),
        ]
    else:
        parts.append("No parity results (no complete normalized run in section 1).")
    parts += [
        "",
        "### 2b. Trained side by side",
        "",
        (
            f"Settings: {ctx.settings[SECTION_IMPL]}. The twins: custom, built-in and custom with "
            "every initial weight moved by one float32 ulp, trained in lock step on the same "
            "batches with the trainer's step (same loss, optimizer, schedule); distance = "
            "||theta - theta_custom|| / ||theta_custom|| over all trainable parameters."
        ),
        "",
    ]
    rows = []
    for r in t.impl:
        diff = (
            f"{100 * (r.builtin_acc - r.custom_acc):+.2f}"
            if r.custom_acc is not None and r.builtin_acc is not None
            else "n/a"
        )
        reach = (
            " / ".join(
                f"{r.twin_reach[k][level] or '>' + str(r.twin_steps)}"
                for level in DISTANCE_LEVELS
                for k in ("builtin", "perturbed")
            )
            if r.twin_reach
            else "-"
        )
        rows.append(
            [
                r.norm,
                _pct(r.custom_acc),
                _pct(r.builtin_acc),
                diff,
                f"{100 * r.seed_std:.2f}" if r.seed_std is not None else "n/a (1 seed)",
                r.loss_split_step if r.loss_split_step is not None else "never",
                f"{_e(r.twin_start, 'builtin')} / {_e(r.twin_start, 'perturbed')}",
                reach,
                f"{_e(r.twin_final, 'builtin')} / {_e(r.twin_final, 'perturbed')}",
            ]
        )
    levels = " then ".join(f"{level:g}" for level in DISTANCE_LEVELS)
    parts += [
        (
            "**Table 2b.** Test accuracy of the two implementations (same seed), the difference in "
            "points against section 1's seed-to-seed std; the first summary step where their "
            "training losses differ by more than 1%; twin distances (built-in / one-ulp control) "
            f"after step 1, the steps where they first exceed {levels}, and at the end."
        ),
        "",
        _table(
            [
                "norm",
                "custom",
                "built-in",
                "diff (points)",
                "seed std (points)",
                "losses part at step",
                "twin distance after step 1",
                f"steps to exceed {levels} (built-in / control each)",
                "final twin distance",
            ],
            rows,
        ),
        _figure(ctx, "impl", "Figure 2. Custom (solid) vs built-in (dashed), same seed"),
        _figure(ctx, "twins", "Figure 2b. Twin distance to the custom model, per step"),
    ]
    return "\n".join(parts)


def _e(d: dict | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "n/a"
    return f"{d[key]:.1e}"


def _section3(ctx: Context, t: Tables) -> str:
    sizes = sorted({r.batch_size for r in t.batch})
    norms = list(dict.fromkeys(r.norm for r in t.batch))
    by = {(r.norm, r.batch_size): r for r in t.batch}
    header = ["batch size", "lr", "steps"]
    for n in norms:
        header.append(f"{n}: test acc")
        if n == "batch":
            header += ["batch: acc with test-batch stats", "batch: gap (points)"]
    rows = []
    for b in sizes:
        any_row = next(by[(n, b)] for n in norms if (n, b) in by)
        row = [b, f"{any_row.lr:g}", any_row.steps]
        for n in norms:
            r = by.get((n, b))
            row.append(_status(r))
            if n == "batch":
                if r and r.batch_stats_acc is not None:
                    row += [
                        _pct(r.batch_stats_acc),
                        f"{100 * (r.inference_acc - r.batch_stats_acc):+.2f}",
                    ]
                else:
                    row += ["-", "-"]
        rows.append(row)
    return "\n".join(
        [
            "## 3. Batch size",
            "",
            (
                f"Settings: {ctx.settings[SECTION_BATCH]}. Test accuracy in inference mode (batch "
                "norm: moving statistics). Batch norm's training-mode accuracy: the test set shuffled "
                "once, cut into batches of the training batch size (remainder dropped), each "
                "normalized with its own statistics; the gap is inference minus training mode on "
                "the same examples. Layer and group norm compute the same thing in both modes."
            ),
            "",
            "**Table 3.**",
            "",
            _table(header, rows) if rows else "No runs.",
            _figure(
                ctx,
                "batch",
                "Figure 3. Test accuracy against batch size; batch norm's two evaluation modes",
            ),
        ]
    )


def _status(r) -> str:
    if r is None:
        return "-"
    if r.status == DIVERGED:
        return f"diverged @ {r.diverged_at}"
    return _pct(r.test_acc)


def _section4(ctx: Context, t: Tables) -> str:
    lrs = sorted({r.lr for r in t.lr})
    norms = list(dict.fromkeys(r.norm for r in t.lr))
    by = {(r.norm, r.lr): r for r in t.lr}
    rows = [[n] + [_status(by.get((n, lr))) for lr in lrs] for n in norms]
    return "\n".join(
        [
            "## 4. Learning rate",
            "",
            (
                f"Settings: {ctx.settings[SECTION_LR]}. A run whose loss or gradient became "
                "non-finite stopped (the trainer's RunError) and counts as diverged at that step."
            ),
            "",
            "**Table 4.** Test accuracy by peak learning rate.",
            "",
            _table(["norm"] + [f"lr {lr:g}" for lr in lrs], rows) if rows else "No runs.",
            _figure(
                ctx,
                "lr",
                "Figure 4. Test accuracy against peak learning rate; crosses at the bottom: diverged",
            ),
        ]
    )


def _section5(ctx: Context, t: Tables) -> str:
    def pair(p) -> str:
        return "-" if any(math.isnan(x) for x in p) else f"{p[0]:.3g} -> {p[1]:.3g}"

    rows = [
        [r.norm, r.layer, pair(r.pre_std), pair(r.post_std), pair(r.post_mean), pair(r.grad_norm)]
        for r in t.inside
    ]
    any_norm = next((o.spec.config for o in ctx.outcomes if SECTION_NORMS in o.spec.sections), None)
    every = f"every {any_norm.summary_every} steps" if any_norm else ""
    return "\n".join(
        [
            "## 5. What normalization does inside the network",
            "",
            (
                f"Settings: section 1's seed-{ctx.preset.seeds[0]} custom runs; the trainer's "
                f"summaries {every} on the training batch of that step: the mean and std over the "
                "whole activation tensor of each hidden layer before its norm (pre: the conv or "
                "dense output) and after it (post), and the L2 norm of each layer's gradient "
                "(`activation/<layer>/...`, `grad_norm/<layer>` in `<run>/train`). Without a norm "
                "layer post = pre."
            ),
            "",
            "**Table 5.** First -> last summary.",
            "",
            _table(
                [
                    "norm",
                    "layer",
                    "std before norm",
                    "std after norm",
                    "mean after norm",
                    "gradient norm",
                ],
                rows,
            )
            if rows
            else "No runs.",
            _figure(ctx, "activations", "Figure 5a. Activation statistics per layer over training"),
            _figure(ctx, "grads", "Figure 5b. Gradient norms per layer over training"),
        ]
    )


def _section6(ctx: Context, t: Tables) -> str:
    base = next((r.rate for r in t.cost if (r.norm, r.impl) == ("none", "custom")), None)

    def num(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    rows = [
        [
            r.norm,
            r.impl,
            num(r.bench),
            num(r.bench_ms, "{:.1f}"),
            f"{r.rate / base:.2f}" if base and r.rate else "n/a",
            num(r.best),
            num(r.images_per_sec),
            r.runs,
        ]
        for r in t.cost
    ]
    bench = t.cost_bench or {}
    design = (
        f"{bench.get('rounds')} rounds x {bench.get('steps')} steps per model at batch "
        f"{bench.get('batch_size')}"
        if bench
        else "not run"
    )
    return "\n".join(
        [
            "## 6. Cost",
            "",
            (
                "Settings: two measurements. (a) An interleaved benchmark "
                f"(`report.analyses.throughput`, {design}): every model of sections 1 and 2 "
                "(seed-0 configs) takes plain training steps (forward, backward, SGD update, no "
                "summaries) on one real batch, the models taking turns in a fresh random order "
                "each round, so load from other processes falls on all alike; median over "
                "rounds. (b) The runs' own `train/images_per_sec` logging windows (which include "
                "summaries and, in some windows, a validation pass), fastest and median. "
                "**The machine's cores are shared**: ratios within one measurement are more "
                "reliable than absolute numbers; the ratio column uses (a), or (b)'s fastest "
                "window without it."
            ),
            "",
            "**Table 6.**",
            "",
            _table(
                [
                    "norm",
                    "impl",
                    "images/s (benchmark)",
                    "ms per step (benchmark)",
                    "ratio to none (custom)",
                    "images/s (fastest window)",
                    "images/s (median window)",
                    "runs",
                ],
                rows,
            )
            if rows
            else "No runs.",
            _figure(ctx, "cost", "Figure 6. Training throughput"),
        ]
    )


def _appendix(ctx: Context) -> str:
    rows = []
    for o in ctx.outcomes:
        result = (
            f"diverged @ {o.diverged_at_step}"
            if o.status == DIVERGED
            else _pct(o.metrics.get("test_accuracy"))
        )
        rows.append(
            [f"`{o.spec.name}`", ", ".join(o.spec.sections), result, duration(o.wall_seconds)]
        )
    return "\n".join(
        [
            "## Appendix: the runs",
            "",
            f"Each is a trainer model_dir under `{ctx.root}/` (flags.txt, checkpoints/, train/ "
            "and eval/ summaries, metrics.json; suite.json: outcome and measured wall time). "
            "`tensorboard --logdir " + ctx.root + "` shows them all.",
            "",
            _table(["run", "sections", "test accuracy", "wall time"], rows),
        ]
    )


def write(ctx: Context, tables: Tables) -> str:
    """Writes REPORT.md into ctx.out_dir; returns its path."""
    paragraphs = findings_lib.findings(tables)
    text = "\n\n".join(
        [
            _header(ctx, tables),
            "## Findings\n\n" + "\n\n".join(f"- {p}" for p in paragraphs),
            _section1(ctx, tables),
            _section2(ctx, tables),
            _section3(ctx, tables),
            _section4(ctx, tables),
            _section5(ctx, tables),
            _section6(ctx, tables),
            _appendix(ctx),
        ]
    )
    os.makedirs(ctx.out_dir, exist_ok=True)
    path = os.path.join(ctx.out_dir, REPORT_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text.rstrip() + "\n")
    os.replace(tmp, path)
    return path
