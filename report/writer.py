"""REPORT.md: the claims table and a short answer first, then one section per question with its
budget, table and figure, then the runs."""

from __future__ import annotations

import os

from normlab.core.tables import markdown_table
from normlab.report import design, stats
from normlab.report.suite import DIVERGED
from normlab.trainer.loop import duration

REPORT_FILE = "REPORT.md"
FIGURES_DIR = "figures"
# Published small CNNs on Fashion-MNIST (shared/REFERENCE.md, accuracy anchors).
PUBLISHED_BN_CNN = 0.934


def _acc(e) -> str:
    return "n/a" if e is None else e.format(100, 2, "%")


def _figure(ctx, key: str, caption: str) -> str:
    name = ctx["figures"].get(key)
    if not name:
        return ""
    return f"\n![{caption}]({FIGURES_DIR}/{name})\n\n*{caption}*\n"


def header(ctx, r) -> str:
    m, t = ctx["machine"], ctx["timing"]
    runs = ctx["outcomes"]
    diverged = sum(o.status == DIVERGED for o in runs)
    return "\n".join(
        [
            "# normlab: which normalization, and why",
            "",
            f"Generated {m['date']} by `{ctx['command']}` (preset **{r.preset.name}**: "
            f"{r.preset.description}). Every number is read from the runs under `{ctx['root']}` "
            "by `report/`; regenerate this file from the same runs without training: "
            f"`{ctx['regenerate']}`.",
            "",
            f"- Runs: {len(runs)} ({len(runs) - diverged} complete, {diverged} diverged), all "
            f"trained by the code at commit {m['commit']}.",
            f"- Wall time of the suite: **{duration(t['total'])}** (training {duration(t['runs'])}"
            f", analyses {duration(t['analyses'])}, reading and writing "
            f"{duration(t['overhead'])}).",
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; {m['os']}; Python "
            f"{m['python']}, TensorFlow {m['tensorflow']}, NumPy {m['numpy']}.",
            "- Every mean over seeds is followed by its 95% confidence interval in brackets "
            "(Student's t; differences: Welch). Accuracies are test accuracies in inference "
            "mode unless a column says otherwise.",
        ]
    )


def claims_section(claims) -> str:
    rows = [[c.number, c.text, c.source, c.evidence, f"**{c.verdict}**", c.where] for c in claims]
    return "\n".join(
        [
            "## Findings: the papers' claims, tested",
            "",
            "Verdict rule: a claim that A beats B is **supported** when the 95% interval of A "
            "minus B lies above 0 in every setting it is tested in, **not supported** when it "
            "does in none, **mixed** otherwise; a claim that A matches (or does not depend on) "
            "B is supported when every interval lies within +-1 point, not supported when every "
            "interval lies outside, mixed otherwise; **not tested** without runs. A diverged run "
            "counts at chance accuracy in a difference.",
            "",
            markdown_table(["#", "claim", "source", "evidence", "verdict", "where"], rows),
        ]
    )


def summary(r, claims) -> str:
    """The two questions, answered in a few sentences, each pointing to its evidence."""
    verdict = {c.number: c.verdict for c in claims}
    ranked = sorted((row for row in r.cnn.rows if row.test_acc), key=lambda row: -row.test_acc.mean)
    lines = ["## Answer", ""]
    if ranked:
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        lead = stats.difference_ci(best.test_accs, second.test_accs) if second else None
        lines.append(
            f"- **Which normalization works best here:** {best.norm} norm, {_acc(best.test_acc)} "
            f"after the short budget"
            + (f", ahead of {second.norm} norm by {lead.format(100, 2, ' points')}"
               if lead else "")
            + " (table cnn). Ranking: "
            + ", ".join(f"{row.norm} {100 * row.test_acc.mean:.2f}%" for row in ranked)
            + "."
        )
    if r.converged and r.converged.rows:
        conv = sorted((row for row in r.converged.rows if row.test_acc),
                      key=lambda row: -row.test_acc.mean)
        same = [row.norm for row in conv] == [row.norm for row in ranked]
        lines.append(
            "- **Trained to convergence** the order is "
            + ", ".join(f"{row.norm} {100 * row.test_acc.mean:.2f}%" for row in conv)
            + f" ({'the same ranking' if same else 'a different ranking'}; table converged)."
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
    return "\n".join(lines)


def _inside_sentence(r) -> str:
    """The last hidden layer's activation std, first -> last summary, without a norm and after
    each norm (table inside)."""
    rows = [x for x in r.inside if x.layer == max(y.layer for y in r.inside)] if r.inside else []
    if not rows:
        return ""
    parts = [
        f"{x.norm} {x.post_std[0]:.2g} -> {x.post_std[1]:.2g}" for x in rows if x.post_std == x.post_std
    ]
    return (
        f"Std of the {rows[0].layer} activations entering ReLU over training (first -> last "
        f"summary): {', '.join(parts)} (table inside)."
    )


def comparison_section(ctx, r, comparison, title: str, figure: str, anchor: str = "") -> str:
    if comparison is None:
        return ""
    rows = [
        [
            row.norm,
            f"{row.runs - row.diverged}/{row.runs}",
            _acc(row.test_acc),
            row.test_loss.format(1, 4) if row.test_loss else "n/a",
            _acc(row.best_val_acc),
            (row.steps_to_threshold.format(1, 0) + f" ({row.reached}/{row.runs - row.diverged})")
            if row.steps_to_threshold else "not reached",
            row.ms_per_step.format(1, 1, " ms") if row.ms_per_step else "n/a",
            row.plateau.format(100, 2, " pts") if row.plateau else "n/a",
        ]
        for row in comparison.rows
    ]
    level = f"{100 * comparison.threshold:.1f}%" if comparison.threshold else "n/a"
    return "\n".join(
        [
            f"## {title}",
            "",
            f"Budget: {design.budget(r.preset, comparison.section)}.{anchor}",
            "",
            f"Steps to threshold: the first validation at or above {level}, the highest "
            f"multiple of {100 * 0.005:.1f}% every norm's mean validation curve reaches (a seed "
            "that never reaches it counts at its last step). Time per "
            "step: the median over the run's logging windows. End-of-training range: the "
            "validation accuracy's max minus min over the last fifth of the validations (small: "
            "the curve is flat).",
            "",
            markdown_table(
                ["norm", "seeds done", "test accuracy", "test loss", "best validation accuracy",
                 f"steps to {level}", "time per step", "end-of-training range"],
                rows,
            ),
            _figure(ctx, figure, f"{title}: validation accuracy and loss, mean and 95% interval"),
        ]
    )


def impl_section(ctx, r) -> str:
    parity_rows = [
        [
            result["norm"],
            row["layer"],
            row["builtin"],
            "x".join(map(str, row["shape"])),
            f"{row['forward_rel']:.1e}",
            ", ".join(f"d{k} {v:.1e}" for k, v in row["grad_rel"].items()),
            f"{row['custom_err64']:.1e} / {row['builtin_err64']:.1e}",
        ]
        for result in r.parity_layers.values()
        for row in result["layers"]
    ]
    model_rows = [
        [
            norm,
            f"{res['model']['logits_abs_training']:.1e}",
            f"{res['model']['logits_abs_inference']:.1e}",
            f"{res['model']['grad_rel_max']:.1e} ({res['model']['grad_rel_worst']})",
            f"{res['model']['control_grad_rel_worst']:.1e}",
        ]
        for norm, res in r.parity_layers.items()
    ]
    side = [
        [arch, norm, _acc(e_c), _acc(e_b),
         f"{100 * (e_b.mean - e_c.mean):+.2f}" if e_c and e_b else "n/a"]
        for (arch, norm), (e_c, e_b) in r.impl.items()
    ]
    return "\n".join(
        [
            "## Custom vs TensorFlow's built-ins",
            "",
            f"Budget: {design.budget(r.preset, 'impl')}.",
            "",
            "**The same weights, the same batch.** For each norm, section cnn's custom run "
            f"(seed {r.preset.seeds[0]}) at its last checkpoint and its first training batch: "
            "each norm layer's real input, the built-in `--norm_impl=builtin` uses; forward "
            "max |custom - built-in| / max |built-in|, gradients of sum(y * dy) "
            "(`core.parity.compare`), and each side's max abs error against the NumPy float64 "
            "reference (`core/reference.py`).",
            "",
            markdown_table(["norm", "layer", "built-in", "input", "fwd rel", "grad rel",
                            "error vs float64 (custom / built-in)"], parity_rows)
            if parity_rows else "No parity results.",
            "",
            "The whole network: custom vs a built-in model holding the same weights; gradients "
            "of the mean cross-entropy per variable; the control is custom with every weight "
            "one float32 ulp up (how much a rounding-sized change moves that gradient).",
            "",
            markdown_table(["norm", "logits abs (training)", "logits abs (inference)",
                            "grad rel (worst variable)", "one-ulp control, same variable"],
                           model_rows) if model_rows else "",
            "",
            "**Trained side by side** (same seed, test accuracy):",
            "",
            markdown_table(["network", "norm", "custom", "built-in", "built-in minus custom "
                            "(points)"], side) if side else "No built-in runs.",
            _figure(ctx, "twins", "Twins trained in lock step: distance to the custom model"),
        ]
    )


def sweep_section(ctx, r, cells, section: str, title: str, setting: str, figure: str) -> str:
    if not cells:
        return ""
    values = sorted({c.setting for c in cells})
    norms = list(dict.fromkeys(c.norm for c in cells))
    header = [setting] + [f"{n}: test accuracy" for n in norms]
    has_bn = any(c.batch_stats_acc for c in cells)
    if has_bn:
        header += ["batch: with batch statistics", "batch: inference minus training mode"]
    rows = []
    for v in values:
        row = [f"{v:g}"]
        for n in norms:
            c = next((c for c in cells if c.norm == n and c.setting == v), None)
            text = _acc(c.test_acc) if c and c.test_acc else "-"
            if c and c.diverged:
                text += f" ({c.diverged}/{c.runs} diverged)"
            row.append(text)
        if has_bn:
            bn = next((c for c in cells if c.norm == "batch" and c.setting == v), None)
            row += [_acc(bn.batch_stats_acc) if bn else "-",
                    bn.gap.format(100, 2, " pts") if bn and bn.gap else "-"]
        rows.append(row)
    return "\n".join(
        [
            f"## {title}",
            "",
            f"Budget: {design.budget(r.preset, section)}. A run whose loss or gradient became "
            "non-finite stopped and counts as diverged. Batch norm's training-mode accuracy: "
            "the test set shuffled once and cut into batches of the training batch size, each "
            "normalized with its own statistics, on the same examples as inference.",
            "",
            markdown_table(header, rows),
            _figure(ctx, figure, f"{title}: test accuracy, mean and 95% interval"),
        ]
    )


def inside_section(ctx, r) -> str:
    def pair(p) -> str:
        return "-" if any(x != x for x in p) else f"{p[0]:.3g} -> {p[1]:.3g}"

    rows = [[x.norm, x.layer, pair(x.pre_std), pair(x.post_std), pair(x.grad_norm)] for x in r.inside]
    return "\n".join(
        [
            "## Inside the network",
            "",
            f"Section cnn's seed-{r.preset.seeds[0]} runs: each hidden layer's output std over the "
            "whole tensor before its norm (pre) and after (post), and its gradient's L2 norm, "
            "at the first and the last summary.",
            "",
            markdown_table(["norm", "layer", "std before norm", "std after norm", "gradient norm"],
                           rows) if rows else "No runs.",
            _figure(ctx, "inside", "Activation std and gradient norm per layer over training"),
        ]
    )


def cost_section(ctx, r) -> str:
    rows = [[key, e.format(1, 2, " ms"), f"{e.mean / r.cost_ms[key.rsplit('/', 2)[0] + '/none/custom'].mean:.2f}"
             if key.rsplit("/", 2)[0] + "/none/custom" in r.cost_ms else "n/a"]
            for key, e in sorted(r.cost_ms.items())]
    return "\n".join(
        [
            "## Cost",
            "",
            f"The trainer's step (forward, backward, update) of each seed-{r.preset.seeds[0]} "
            f"model on one real batch, {r.preset.cost_rounds} rounds x {r.preset.cost_steps} "
            "steps, the models taking turns in a fresh random order each round so the shared "
            "machine's load falls on all alike; mean over rounds with its 95% interval.",
            "",
            markdown_table(["network/norm/impl", "ms per step", "vs no norm"], rows)
            if rows else "Not measured.",
            _figure(ctx, "cost", "Cost per training step"),
        ]
    )


def appendix(ctx) -> str:
    rows = [
        [f"`{o.spec.name}`", ", ".join(o.spec.sections),
         f"diverged @ {o.diverged_at_step}" if o.status == DIVERGED
         else f"{100 * o.metrics.get('test_accuracy', float('nan')):.2f}%",
         duration(o.wall_seconds)]
        for o in ctx["outcomes"]
    ]
    return "\n".join(
        [
            "## Appendix: the runs",
            "",
            f"Each is a trainer run directory under `{ctx['root']}/`; "
            f"`tensorboard --logdir {ctx['root']}` shows them all.",
            "",
            markdown_table(["run", "sections", "test accuracy", "wall time"], rows),
        ]
    )


def write(ctx: dict, r, claims) -> str:
    """Writes REPORT.md into ctx["out_dir"]; returns its path."""
    converged_anchor = ""
    bn = next((row for row in (r.converged.rows if r.converged else []) if row.norm == "batch"), None)
    if bn and bn.test_acc:
        converged_anchor = (
            f" Published: 2 conv + pooling + BN reaches {100 * PUBLISHED_BN_CNN:.1f}%; batch "
            f"norm here: {_acc(bn.test_acc)}."
        )
    parts = [
        header(ctx, r),
        claims_section(claims),
        summary(r, claims),
        comparison_section(ctx, r, r.cnn, "CNN: with and without normalization", "cnn"),
        comparison_section(ctx, r, r.converged, "CNN trained to convergence", "converged",
                           converged_anchor),
        impl_section(ctx, r),
        sweep_section(ctx, r, r.batch, "batch", "CNN: batch size", "batch size", "batch"),
        sweep_section(ctx, r, r.lr, "lr", "CNN: learning rate", "peak learning rate", "lr"),
        comparison_section(ctx, r, r.lstm, "LSTM: recurrent normalization", "lstm"),
        sweep_section(ctx, r, r.lstm_batch, "lstm_batch", "LSTM: batch size", "batch size",
                      "batch"),
        inside_section(ctx, r),
        cost_section(ctx, r),
        appendix(ctx),
    ]
    text = "\n\n".join(p for p in parts if p)
    os.makedirs(ctx["out_dir"], exist_ok=True)
    path = os.path.join(ctx["out_dir"], REPORT_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text.rstrip() + "\n")
    os.replace(tmp, path)
    return path
