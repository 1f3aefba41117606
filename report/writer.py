"""REPORT.md: the claims table and a short answer first, then one section per question with its
budget, table and figure, then the runs."""

from __future__ import annotations

import collections
import os

from normlab.core.tables import markdown_table
from normlab.report import design, stats
from normlab.report.suite import DIVERGED
from normlab.trainer.loop import duration
from normlab.trainer.run_dir import write_atomically

REPORT_FILE = "REPORT.md"
FIGURES_DIR = "figures"
# Published small CNNs on Fashion-MNIST (shared/REFERENCE.md, accuracy anchors).
PUBLISHED_BN_CNN = 0.934
VERDICT_RULE = (
    "Verdict rule: a claim that A beats B is **supported** when the 95% interval of A minus B "
    "lies above 0 in every setting it is tested in, **not supported** when it does in none, "
    "**mixed** otherwise; a claim that A matches (or does not depend on) B is supported when "
    "every interval lies within +-1 point, not supported when every interval lies outside, mixed "
    "otherwise; **not tested** without runs. A diverged run counts at chance accuracy."
)


def _section(*parts: str) -> str:
    """The non-empty parts, a blank line apart."""
    return "\n\n".join(p.strip("\n") for p in parts if p)


def _table(header: str, rows: list, empty: str = "No runs.") -> str:
    return markdown_table(header.split("|"), rows) if rows else empty


def _acc(e) -> str:
    return "n/a" if e is None else e.format(100, 2, "%")


def _figure(ctx, key: str, caption: str) -> str:
    name = ctx["figures"].get(key)
    return f"![{caption}]({FIGURES_DIR}/{name})\n\n*{caption}*" if name else ""


def _trained_by(runs) -> str:
    """Which code trained the runs, from their suite records."""
    counts = collections.Counter(c for o in runs for c in o.commits or ("not recorded",))
    if len(counts) == 1:
        return f"all trained by the code at commit {next(iter(counts))}"
    listed = ", ".join(f"{c} ({n} runs)" for c, n in counts.most_common())
    return f"trained by the code at commits {listed}"


def header(ctx, r) -> str:
    m, t, runs = ctx["machine"], ctx["timing"], ctx["outcomes"]
    diverged = sum(o.status == DIVERGED for o in runs)
    return _section(
        "# normlab: which normalization, and why",
        f"Generated {m['date']} by `{ctx['command']}` (preset **{r.preset.name}**: "
        f"{r.preset.description}). Every number is read from the runs under `{ctx['root']}` by "
        f"`report/`; regenerate this file from the same runs without training: "
        f"`{ctx['regenerate']}`.",
        f"- Runs: {len(runs)} ({len(runs) - diverged} complete, {diverged} diverged), "
        f"{_trained_by(runs)}; this file written by the code at commit {m['commit']}.\n"
        f"- Wall time of the suite: **{duration(t['total'])}** (training {duration(t['runs'])}, "
        f"analyses {duration(t['analyses'])}, reading and writing {duration(t['overhead'])}).\n"
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; {m['os']}; Python "
        f"{m['python']}, TensorFlow {m['tensorflow']}, NumPy {m['numpy']}.\n"
        "- Every mean over seeds is followed by its 95% confidence interval in brackets "
        "(Student's t; differences: Welch). Accuracies are test accuracies in inference mode "
        "unless a column says otherwise.",
    )


def claims_section(claims) -> str:
    rows = [[c.number, c.text, c.source, c.evidence, f"**{c.verdict}**", c.where] for c in claims]
    return _section(
        "## Findings: the papers' claims, tested",
        VERDICT_RULE,
        _table("#|claim|source|evidence|verdict|where", rows),
    )


def _ranking(comparison) -> list:
    return sorted((x for x in comparison.rows if x.test_acc), key=lambda x: -x.test_acc.mean)


def summary(r, claims) -> str:
    """The two questions, answered in a few sentences, each pointing to its evidence."""
    verdict = {c.number: c.verdict for c in claims}
    ranked, lines = _ranking(r.cnn), []
    if ranked:
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        lead = stats.difference_ci(best.test_accs, second.test_accs) if second else None
        ahead = f", ahead of {second.norm} norm by {lead.format(100, 2, ' points')}" if lead else ""
        order = ", ".join(f"{x.norm} {100 * x.test_acc.mean:.2f}%" for x in ranked)
        lines.append(
            f"- **Which normalization works best here:** {best.norm} norm, "
            f"{_acc(best.test_acc)} after the short budget{ahead} (table cnn). Ranking: {order}."
        )
    if r.converged and r.converged.rows:
        conv = _ranking(r.converged)
        same = "the same" if [x.norm for x in conv] == [x.norm for x in ranked] else "a different"
        order = ", ".join(f"{x.norm} {100 * x.test_acc.mean:.2f}%" for x in conv)
        lines.append(f"- **Trained to convergence** the order is {order} ({same} ranking).")
    longest = [x for x in (r.long.rows if r.long else []) if x.test_acc]
    if longest:
        lines.append(
            f"- **The best batch-norm CNN** ({design.epochs(r.preset.long_epochs)} with "
            f"augmentation) reaches {_acc(longest[0].test_acc)}; the published 2 conv + "
            f"pooling + BN network {100 * PUBLISHED_BN_CNN:.1f}% (table long)."
        )
    lines.append(
        f"- **Why:** batch norm's faster training is {verdict[2]} (claim 2) and its tolerance of "
        f"higher learning rates {verdict[1]} (claim 1). {_inside_sentence(r)}"
    )
    lines.append(
        f"- **When layer norm beats batch norm:** at small batches: {verdict[4]} (claim 4); in "
        f"the recurrent network: {verdict[5]} (claim 5); its independence of the batch size: "
        f"{verdict[3]} (claim 3). In ConvNets at the usual batch size batch norm is ahead: "
        f"{verdict[6]} (claim 6)."
    )
    return _section("## Answer", "\n".join(lines))


def _inside_sentence(r) -> str:
    """The last hidden layer's activation std entering ReLU, first -> last summary (inside)."""
    last = max((x.layer for x in r.inside), default=None)
    parts = [
        f"{x.norm} {x.post_std[0]:.2g} -> {x.post_std[1]:.2g}" for x in r.inside if x.layer == last
    ]
    if not parts:
        return ""
    return (
        f"Std of the {last} activations entering ReLU over training (first -> last "
        f"summary): {', '.join(parts)} (table inside)."
    )


def comparison_section(ctx, r, comparison, title: str, figure: str, anchor: str = "") -> str:
    if comparison is None:
        return ""
    level = f"{100 * comparison.threshold:.1f}%" if comparison.threshold else "n/a"
    rows = [
        [
            x.norm,
            f"{x.runs - x.diverged}/{x.runs}",
            _acc(x.test_acc),
            x.test_loss.format(1, 4) if x.test_loss else "n/a",
            _acc(x.best_val_acc),
            x.steps_to_threshold.format(1, 0) + f" ({x.reached}/{x.runs - x.diverged})"
            if x.steps_to_threshold
            else "not reached",
            x.ms_per_step.format(1, 1, " ms") if x.ms_per_step else "n/a",
            x.plateau.format(100, 2, " pts") if x.plateau else "n/a",
        ]
        for x in comparison.rows
    ]
    return _section(
        f"## {title}",
        f"Budget: {design.budget(r.preset, comparison.section)}.{anchor}",
        f"Steps to threshold: the first validation at or above {level}, the highest multiple "
        "of 0.5% every norm's mean validation curve reaches (a seed that never reaches it counts "
        "at its last step). Time per step: the median over the run's logging windows. "
        "End-of-training range: the validation accuracy's max minus min over the last fifth of "
        "the validations (small: the curve is flat).",
        _table(
            f"norm|seeds done|test accuracy|test loss|best validation accuracy|steps to {level}|"
            "time per step|end-of-training range",
            rows,
        ),
        _figure(ctx, figure, f"{title}: validation accuracy and loss, mean and 95% interval"),
    )


def impl_section(ctx, r) -> str:
    parity_rows = [
        [
            res["norm"],
            x["layer"],
            x["builtin"],
            "x".join(map(str, x["shape"])),
            f"{x['forward_rel']:.1e}",
            ", ".join(f"d{k} {v:.1e}" for k, v in x["grad_rel"].items()),
            f"{x['custom_err64']:.1e} / {x['builtin_err64']:.1e}",
        ]
        for res in r.parity_layers.values()
        for x in res["layers"]
    ]
    side = [
        [arch, norm, _acc(c), _acc(b), f"{100 * (b.mean - c.mean):+.2f}" if c and b else "n/a"]
        for (arch, norm), (c, b) in r.impl.items()
    ]
    return _section(
        "## Custom vs TensorFlow's built-ins",
        f"Budget: {design.budget(r.preset, 'impl')}.",
        "**The same weights, the same batch.** For each norm, section cnn's custom run (seed "
        f"{r.preset.seeds[0]}) at its last checkpoint and its first training batch: each norm "
        "layer's real input, the built-in `--norm_impl=builtin` uses; forward max |custom - "
        "built-in| / max |built-in|, gradients of sum(y * dy) (`core.parity.compare`), and each "
        "side's max abs error against the NumPy float64 reference (`core/reference.py`).",
        _table(
            "norm|layer|built-in|input|fwd rel|grad rel|error vs float64 (custom / built-in)",
            parity_rows,
            "No parity results.",
        ),
        "**Trained side by side** (same seed, test accuracy):",
        _table(
            "network|norm|custom|built-in|built-in minus custom (points)", side, "No built-in runs."
        ),
        _figure(ctx, "twins", "Twins trained in lock step: distance to the custom model"),
    )


def sweep_section(ctx, r, cells, section: str, title: str, setting: str, figure: str) -> str:
    if not cells:
        return ""
    norms = list(dict.fromkeys(c.norm for c in cells))
    has_bn = any(c.batch_stats_acc for c in cells)
    rows = []
    for v in sorted({c.setting for c in cells}):
        row, by_norm = [f"{v:g}"], {c.norm: c for c in cells if c.setting == v}
        for n in norms:
            c = by_norm.get(n)
            row.append(
                (_acc(c.test_acc) if c and c.test_acc else "-")
                + (f" ({c.diverged}/{c.runs} diverged)" if c and c.diverged else "")
            )
        bn = by_norm.get("batch")
        if has_bn:
            row += [
                _acc(bn.batch_stats_acc) if bn else "-",
                bn.gap.format(100, 2, " pts") if bn and bn.gap else "-",
            ]
        rows.append(row)
    header = "|".join([setting] + [f"{n}: test accuracy" for n in norms])
    if has_bn:
        header += "|batch: with batch statistics|batch: inference minus training mode"
    return _section(
        f"## {title}",
        f"Budget: {design.budget(r.preset, section)}. A run whose loss or gradient became "
        "non-finite stopped and counts as diverged. Batch norm's training-mode accuracy: the "
        "test set shuffled once and cut into batches of the training batch size, each "
        "normalized with its own statistics, on the same examples as inference.",
        _table(header, rows),
        _figure(ctx, figure, f"{title}: test accuracy, mean and 95% interval"),
    )


def inside_section(ctx, r) -> str:
    def pair(p) -> str:
        return "-" if any(x != x for x in p) else f"{p[0]:.3g} -> {p[1]:.3g}"

    rows = [
        [x.norm, x.layer, pair(x.pre_std), pair(x.post_std), pair(x.grad_norm)] for x in r.inside
    ]
    return _section(
        "## Inside the network",
        f"Section cnn's seed-{r.preset.seeds[0]} runs: each hidden layer's output std over the "
        "whole tensor before its norm (pre) and after (post), and its gradient's L2 norm, at "
        "the first and the last summary.",
        _table("norm|layer|std before norm|std after norm|gradient norm", rows),
        _figure(ctx, "inside", "Activation std and gradient norm per layer over training"),
    )


def cost_section(ctx, r) -> str:
    rows = []
    for key, e in sorted(r.cost_ms.items()):
        base = r.cost_ms.get(key.split("/")[0] + "/none/custom")
        rows.append([key, e.format(1, 2, " ms"), f"{e.mean / base.mean:.2f}" if base else "n/a"])
    return _section(
        "## Cost",
        f"The trainer's step (forward, backward, update) of each seed-{r.preset.seeds[0]} model "
        f"on one real batch, {r.preset.cost_rounds} rounds x {r.preset.cost_steps} steps, the "
        "models taking turns in a fresh random order each round so the shared machine's load "
        "falls on all alike; mean over rounds with its 95% interval.",
        _table("network/norm/impl|ms per step|vs no norm", rows, "Not measured."),
        _figure(ctx, "cost", "Cost per training step"),
    )


def appendix(ctx) -> str:
    rows = [
        [
            f"`{o.spec.name}`",
            ", ".join(o.spec.sections),
            f"diverged @ {o.diverged_at_step}"
            if o.status == DIVERGED
            else f"{100 * o.metrics.get('test_accuracy', float('nan')):.2f}%",
            duration(o.wall_seconds),
        ]
        for o in ctx["outcomes"]
    ]
    return _section(
        "## Appendix: the runs",
        f"Each is a trainer run directory under `{ctx['root']}/`; "
        f"`.venv/bin/tensorboard --logdir {ctx['root']}` shows them all.",
        _table("run|sections|test accuracy|wall time", rows),
    )


def _published_anchor(r) -> str:
    """Where the batch-norm CNN lands against the published 2 conv + pooling + BN network."""
    epochs = {"converged": r.preset.converged_epochs, "long": r.preset.long_epochs}
    parts = [
        f"{epochs[c.section]:g} epochs {_acc(row.test_acc)}"
        for c in (r.converged, r.long)
        if c
        for row in c.rows
        if row.norm == "batch" and row.test_acc
    ]
    if not parts:
        return ""
    return (
        f" Published: 2 conv + pooling + BN reaches {100 * PUBLISHED_BN_CNN:.1f}% "
        f"(shared/REFERENCE.md); this CNN with batch norm and augmentation: {', '.join(parts)}."
    )


def write(ctx: dict, r, claims) -> str:
    """Writes REPORT.md into ctx["out_dir"]; returns its path."""
    anchor = _published_anchor(r)
    text = _section(
        header(ctx, r),
        claims_section(claims),
        summary(r, claims),
        comparison_section(ctx, r, r.cnn, "CNN: with and without normalization", "cnn"),
        comparison_section(ctx, r, r.converged, "CNN trained to convergence", "converged"),
        comparison_section(ctx, r, r.long, "Batch-norm CNN trained longer", "long", anchor),
        impl_section(ctx, r),
        sweep_section(ctx, r, r.batch, "batch", "CNN: batch size", "batch size", "batch"),
        sweep_section(ctx, r, r.lr, "lr", "CNN: learning rate", "peak learning rate", "lr"),
        comparison_section(ctx, r, r.lstm, "LSTM: recurrent normalization", "lstm"),
        sweep_section(
            ctx, r, r.lstm_batch, "lstm_batch", "LSTM: batch size", "batch size", "batch"
        ),
        inside_section(ctx, r),
        cost_section(ctx, r),
        appendix(ctx),
    )
    os.makedirs(ctx["out_dir"], exist_ok=True)
    path = os.path.join(ctx["out_dir"], REPORT_FILE)
    write_atomically(path, text.rstrip() + "\n")
    return path
