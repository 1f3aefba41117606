"""REPORT.md and its figures as a pure function of the records: the answer, the claims table,
then one section per question with its budget, table and figure, then the records.

Nothing here reads the clock, the machine or a run directory: the same records give the same
REPORT.md, byte for byte, on any machine (tests/test_report.py checks the committed one).
"""

from __future__ import annotations

import collections
import os
import shutil

from normlab.core.tables import markdown_table
from normlab.report import claims, design, figures, records, stats, tables
from normlab.trainer.loop import duration

REPORT_FILE, FIGURES_DIR = "REPORT.md", "figures"
HOLM = (
    "**How to read it.** Each mean over seeds is followed by its 95% interval (Student's t, n - 1 "
    "degrees of freedom). Claims compare two cells that share seeds (initial weights and data "
    "order), so each estimate is the mean of the per-seed differences A - B, oriented so that "
    "a positive value favours A, with a paired t interval; the cost claim pairs the benchmark's "
    "rounds. A claim that A beats B is *supported* when the interval lies above 0, "
    "*contradicted* when it lies below, *inconclusive* when it contains 0. A claim that A "
    "matches B is tested by two one-sided tests against +-1 accuracy point, fixed before any "
    "run: supported when the 90% interval lies inside, contradicted when the 95% interval lies "
    "wholly outside, inconclusive otherwise. Over the table, verdicts are held to Holm's rule at "
    "family-wise level 0.05: a claim whose p-value Holm does not reject is inconclusive. A "
    "diverged run counts at chance accuracy and as never reaching a threshold; a run that never "
    "reaches a threshold is left out of that interval and counted (k of n). Intervals are "
    "clipped to what the quantity can take (accuracy to [0, 100]%, differences to +-100 points, "
    "times to >= 0) and then say '(clipped)'."
)


def _section(*parts: str) -> str:
    return "\n\n".join(p.strip("\n") for p in parts if p)


def _acc(e) -> str:
    return "n/a" if e is None else e.format(100, 2, "%")


def _figure(name: str | None, caption: str) -> str:
    return f"![{caption}]({FIGURES_DIR}/{name})\n\n*{caption}*" if name else ""


def _rows_table(rows: list[tables.Row], threshold: float, with_steps: bool = True) -> str:
    body = []
    for r in rows:
        steps = (
            r.steps.format(1, 0) + f" ({r.reached} of {r.runs - r.diverged} reached)"
            if r.steps
            else f"not reached (0 of {r.runs - r.diverged})"
        )
        line = [r.label, f"{r.runs}", f"{r.diverged}", _acc(r.acc)]
        line += [steps] if with_steps else []
        line += [r.ms.format(1, 1, " ms") if r.ms else "n/a"]
        body.append(line)
    header = ["cell", "seeds", "diverged", "test accuracy"]
    header += [f"steps to {threshold:.0%} validation accuracy"] if with_steps else []
    return markdown_table(header + ["ms per step (in training)"], body) if body else "No records."


def _rows_section(p, title: str, section: str, rows, figure: str | None = None) -> str:
    """A section of per-cell rows: its budget, its table, its validation-curve figure."""
    threshold = p.lstm_threshold if section.startswith("lstm") else p.cnn_threshold
    caption = f"{title.split(':')[0]}: validation accuracy, mean and 95% band"
    return _section(f"## {title}", f"Budget: {design.budget(p, section)}.",
                    _rows_table(rows, threshold), _figure(figure, caption))  # fmt: skip


def header(ctx: tables.Context, sessions: list[dict], jobs: list, missing: int, shown: str) -> str:
    p = ctx.preset
    commits = collections.Counter(r["commit"] for r in ctx.records)
    cpus = collections.Counter(r["cpu"] for r in ctx.records)
    tfs = sorted({r["tensorflow"] for r in ctx.records})
    planned, total = sum(design.seconds(p, j) for j in jobs), len(jobs)
    measured, at_once = records.measured(sessions, bold="**")
    return _section(
        "# normlab: which normalization, and why",
        f"Written by `report.py --preset={p.name} --write` from the {len(ctx.records)} records in "
        f"`{shown}/` (preset **{p.name}**: {p.description}); nothing in it is "
        "typed by hand. Train what is missing and rewrite it: "
        f'`report.py --preset={p.name}` (BUILD_NOTES.md, "The report\'s suite").',
        f"- Records: {len(ctx.records)} of {total} planned jobs"
        + (f" (**{missing} missing**: the claims they feed say *not tested*)" if missing else "")
        + f"; made by the code at commit{'s' if len(commits) > 1 else ''} "
        + ", ".join(f"{c} ({n})" for c, n in commits.most_common())
        + ".\n"
        f"- Machine: {', '.join(f'{c} ({n} records)' for c, n in cpus.most_common())}; "
        f"TensorFlow {', '.join(tfs)}.\n"
        f"- Suite wall time: measured {measured}; predicted by the cost model of `--plan`: "
        f"{design.predicted(planned, at_once)}.",
    )


def answer(ctx: tables.Context, results: dict, cnn_rows: list[tables.Row]) -> str:
    rank = tables.ranking(cnn_rows)
    if rank is None:
        best = "not tested (no records)"
    elif not rank.tied:
        best = f"**{rank.leader} norm**: its paired lead over every other norm lies above 0"
    else:
        best = (
            f"**{rank.leader} norm** leads, **tied with** {', '.join(rank.tied)} (the paired "
            "interval of its lead over each contains 0)"
        )

    def v(cid: str) -> str:
        r = results[cid]
        return f"**{r.verdict}** (claim {claims.CLAIMS.index(r.claim) + 1}: {r.evidence()})"

    ranked = sorted((r for r in cnn_rows if r.acc), key=lambda r: -r.acc.mean)
    if ranked:
        best += "; by mean test accuracy: " + ", ".join(
            f"{r.label} {100 * r.acc.mean:.2f}%" for r in ranked
        )

    rows = [
        [
            "Which normalization works best here (CNN, Fashion-MNIST)?",
            best,
            "table cnn; claims "
            + ", ".join(
                str(claims.CLAIMS.index(results[c].claim) + 1) for c in ("bn_acc", "bn_over_ln_cnn")
            ),
        ],
        [
            "Why does batch norm help?",
            f"fewer steps: {v('bn_speed')}; higher learning rates: "
            f"{v('bn_lr')}; each layer's activation std before and after its norm: table inside",
            "tables cnn, lr, inside",
        ],
        [
            "When does layer norm beat batch norm?",
            f"at the smallest batch: {v('ln_over_bn_small')}; "
            f"in the LSTM: {v('ln_over_bn_lstm')}; in ConvNets at batch "
            f"{ctx.preset.reference_batch} "
            f"batch norm beats it: {v('bn_over_ln_cnn')}",
            "tables batch, lstm",
        ],
        [
            "Why?",
            f"layer norm's statistics are per example, so they do not depend on the batch: "
            f"flat across batch sizes: {v('ln_flat')}, group norm {v('gn_flat')}; how far batch "
            "norm's moving statistics are from the statistics of a batch of its training size: "
            "table batch, column 'inference minus training mode'",
            "table batch",
        ],
    ]
    return _section(
        "## The answer",
        "Verdicts with the claim's number in the table below; each rests on the cells named.",
        markdown_table(["question", "answer", "rests on"], rows),
    )


def claims_section(results: list[claims.Result]) -> str:
    rows = []
    for i, r in enumerate(results, 1):
        p = "n/a" if r.p != r.p else f"{r.p:.2g}"
        rows.append([i, r.claim.text, r.claim.source, r.evidence(), p, r.raw, f"**{r.verdict}**"])
    header = ["#", "claim (A vs B)", "source", "A vs B: difference, + favours A [95% interval]",
              "p", "by its own interval", "verdict (Holm)"]  # fmt: skip
    return _section("## Claims, tested", HOLM, markdown_table(header, rows))


def sweep_section(title, budget, cells: dict, setting: str, figure: str | None) -> str:
    if not cells:
        return ""
    values = sorted({v for cs in cells.values() for v, _ in cs})
    body = []
    for value in values:
        line = [f"{value:g}"]
        for norm, cs in cells.items():
            r = dict(cs).get(value)
            text = _acc(r.acc) if r else "-"
            line.append(
                text + (f" ({r.diverged} of {r.runs} diverged)" if r and r.diverged else "")
            )
        bn = dict(cells.get("batch", [])).get(value)
        if any(r.bn_eval for cs in cells.values() for _, r in cs):
            line += [
                _acc(bn.bn_eval) if bn else "-",
                bn.gap.format(100, 2, " pts") if bn and bn.gap else "-",
            ]
        body.append(line)
    head = [setting] + [f"{n}: test accuracy" for n in cells]
    if len(body[0]) > len(head):
        head += ["batch: with batch statistics", "batch: inference minus training mode"]
    return _section(
        f"## {title}",
        f"Budget: {budget}.",
        markdown_table(head, body),
        _figure(figure, f"{title}: test accuracy, mean and 95% interval"),
    )


def impl_section(ctx: tables.Context, twin_fig) -> str:
    parity = ctx.one("parity")
    worst = {}
    for row in parity["result"]["rows"] if parity else []:
        key = (row["norm"], row["builtin_name"], row["dtype"])
        err = max(row["forward_rel"], *row["grad_rel"].values())
        worst[key] = max(worst.get(key, 0.0), err)
    parity_rows = [[n, b, d, f"{e:.1e}"] for (n, b, d), e in sorted(worst.items())]
    layers = [
        [
            r["config"]["norm"],
            x["layer"],
            x["builtin"],
            f"{x['forward_rel']:.1e}",
            f"{x['grad_rel']:.1e}",
            f"{x['custom_err64']:.1e} / {x['builtin_err64']:.1e}",
        ]
        for r in ctx.runs
        for x in r.get("analyses", {}).get("layer_parity", [])
    ]
    twin_rows = [
        [
            key,
            len(t["step"]),
            f"{t['distance']['builtin'][-1]:.1e}",
            f"{t['distance']['perturbed'][-1]:.1e}",
        ]
        for key, t in twins_of(ctx).items()
        if t["step"]
    ]
    return _section(
        "## normlab vs TensorFlow's built-ins",
        "**Same inputs** (`parity.py`'s table: random inputs, every norm, built-in, shape and "
        "dtype): the largest relative difference of the output and of every gradient.",
        markdown_table(["norm", "built-in", "dtype", "largest relative difference"], parity_rows)
        if parity_rows
        else "No parity record.",
        "**Same trained weights, same real batch** (seed 0 of section cnn, every norm layer; "
        "the last column is each side's largest absolute error against NumPy in float64):",
        markdown_table(
            [
                "norm",
                "layer",
                "built-in",
                "output rel",
                "gradient rel",
                "error vs float64 (normlab / built-in)",
            ],
            layers,
        )
        if layers
        else "",
        "**Trained in lock step** (twins: normlab's model, the built-in's from the same initial "
        "weights, and normlab's with every initial weight moved by one float32 ulp, trained by "
        "the trainer's step on the same batches). If the built-in drifts no further than the "
        "one-ulp control, the two implementations differ by rounding and nothing else; training "
        "amplifies any rounding difference at the same rate.",
        markdown_table(
            [
                "network, norm",
                "steps",
                "built-in: distance at the end",
                "one-ulp control: distance at the end",
            ],
            twin_rows,
        )
        if twin_rows
        else "",
        _figure(twin_fig, "Twins trained in lock step: relative distance to normlab's model"),
    )


def twins_of(ctx: tables.Context) -> dict:
    return {
        f"{'LSTM' if r['config']['arch'] == 'lstm' else 'CNN'} {r['config']['norm']}": r[
            "analyses"
        ]["twins"]
        for r in ctx.runs
        if "twins" in r.get("analyses", {})
    }


def inside_rows(ctx: tables.Context) -> list[dict]:
    out = []
    for norm in design.CNN_NORMS:
        r = next(
            (
                r
                for r in ctx.select(sections="cnn", norm=norm, seed=0)
                if r["status"] == records.COMPLETE
            ),
            None,
        )
        for layer, values in (r or {}).get("inside", {}).items():
            if not layer.endswith("_norm"):
                out.append({"norm": norm, "layer": layer, **values})
    return out


def inside_section(rows: list[dict], figure) -> str:
    def pair(p):
        return "-" if not p else f"{p[0]:.3g} -> {p[1]:.3g}"

    body = [
        [
            r["norm"],
            r["layer"],
            pair(r.get("pre_std")),
            pair(r.get("post_std")),
            pair(r.get("grad_norm")),
        ]
        for r in rows
    ]
    return _section(
        "## Inside the network",
        "Seed 0 of section cnn: each hidden layer's output std (over the whole tensor) before its "
        "norm and after it, and the L2 norm of its gradient, at the first and the last summary.",
        markdown_table(["norm", "layer", "std before the norm", "std after", "gradient norm"], body)
        if body
        else "No records.",
        _figure(figure, "Activation std and gradient norm per layer: first and last summary"),
    )


def cost_section(ctx: tables.Context, estimates: dict, figure) -> str:
    base = estimates.get("none")
    body = [
        [k, e.format(1, 2, " ms"), f"{e.mean / base.mean:.2f}" if base else "n/a"]
        for k, e in estimates.items()
    ]
    p = ctx.preset
    return _section(
        "## Cost",
        f"The trainer's step (forward, backward, update) of each norm's CNN on one real batch of "
        f"{p.reference_batch}, {p.cost_rounds} rounds of {p.cost_steps} steps, the models taking "
        "turns in a fresh random order each round (bench.model's timer); mean over rounds with "
        "its 95% interval.",
        markdown_table(["norm", "ms per step", "vs none"], body) if body else "Not measured.",
        _figure(figure, "Cost per training step"),
    )


def appendix(ctx: tables.Context) -> str:
    body = []
    for r in sorted(ctx.records, key=lambda r: r["name"]):
        if r["kind"] != "run":
            outcome = "measured"
        elif r["status"] == records.DIVERGED:
            outcome = f"diverged at step {r['diverged_at_step']}"
        else:
            outcome = f"{100 * r['final']['test_accuracy']:.2f}%"
        body.append(
            [
                f"`{r['name']}`",
                ", ".join(r["sections"]),
                outcome,
                duration(r.get("wall_seconds")),
                r["commit"],
            ]
        )
    return _section(
        "## Appendix: the records",
        markdown_table(["job", "sections", "test accuracy", "wall time", "commit"], body),
    )


def _shown(results_dir: str, preset: str) -> str:
    """The records' folder as the report names it: relative to the repository when inside it
    (so the committed report does not depend on where the checkout is)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rel = os.path.relpath(os.path.abspath(os.path.join(results_dir, preset)), repo)
    return rel if not rel.startswith("..") else os.path.join(results_dir, preset)


def write(preset: design.Preset, results_dir: str, out_dir: str) -> str:
    """REPORT.md and figures/ in out_dir from the preset's records; returns REPORT.md's path."""
    all_records = records.load_all(results_dir, preset.name)
    examples = next((r["train_examples"] for r in all_records.values() if "train_examples" in r), 0)
    jobs = design.plan(preset, "", examples or design.TRAIN_EXAMPLES)
    names = {j.name for j in jobs}
    ctx = tables.Context(preset, {k: r for k, r in all_records.items() if k in names})
    results = claims.evaluate(ctx.records, ctx)
    by_id = {r.claim.id: r for r in results}
    fig_dir = os.path.join(out_dir, FIGURES_DIR)
    shutil.rmtree(fig_dir, ignore_errors=True)  # figures of older designs go
    p = preset
    cnn = tables.comparison(ctx, "cnn", design.CNN_NORMS)
    lstm = tables.comparison(ctx, "lstm", design.LSTM_NORMS)
    batch, lr = tables.sweep(ctx, "batch", "batch_size"), tables.sweep(ctx, "lr", "learning_rate")
    wn = [
        tables.row(ctx, f"weight, init {i}", ctx.select(sections="wn_init", wn_init=i))
        for i in ("norm", "data")
        if ctx.select(sections="wn_init", wn_init=i)
    ]
    gain = [
        tables.row(ctx, f"batch, gain {g:g}", ctx.select(sections="lstm_gain", recurrent_gain=g))
        for g in (0.1, 1.0)
        if ctx.select(sections="lstm_gain", recurrent_gain=g)
    ]
    cost_record = ctx.one("cost")
    cost = {
        k: stats.mean_ci(v, tables.TIME_BOUNDS)
        for k, v in (cost_record["result"]["ms_per_step"].items() if cost_record else [])
    }
    inside = inside_rows(ctx)
    f = {
        "cnn": figures.curves(cnn, fig_dir, "cnn.png", "CNN", p.cnn_threshold),
        "lstm": figures.curves(lstm, fig_dir, "lstm.png", "LSTM", p.lstm_threshold),
        "batch": figures.sweep([("CNN: batch size", batch, "batch size")], fig_dir, "batch.png"),
        "lr": figures.sweep(
            [("CNN: peak learning rate", lr, "peak learning rate")], fig_dir, "lr.png"
        ),
        "twins": figures.twins(twins_of(ctx), fig_dir),
        "inside": figures.inside(inside, fig_dir),
        "cost": figures.cost(cost, fig_dir),
    }
    missing = len(names - set(all_records))
    text = _section(
        header(
            ctx, records.sessions(results_dir, p.name), jobs, missing, _shown(results_dir, p.name)
        ),
        answer(ctx, by_id, cnn),
        claims_section(results),
        _rows_section(p, "CNN: with and without normalization", "cnn", cnn, f["cnn"]),
        _rows_section(p, "Weight norm's initialisation", "wn_init", wn) if wn else "",
        sweep_section(
            "CNN: learning rate", design.budget(p, "lr"), lr, "peak learning rate", f["lr"]
        ),
        sweep_section(
            "CNN: batch size", design.budget(p, "batch"), batch, "batch size", f["batch"]
        ),
        _rows_section(p, "LSTM: recurrent normalization", "lstm", lstm, f["lstm"]),
        _rows_section(p, "Recurrent batch norm's initial gain", "lstm_gain", gain) if gain else "",
        impl_section(ctx, f["twins"]),
        inside_section(inside, f["inside"]),
        cost_section(ctx, cost, f["cost"]),
        appendix(ctx),
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, REPORT_FILE)
    records.write_text(path, text.rstrip() + "\n")
    return path
