"""REPORT.md and its figures as a pure function of the records: the answer, the claims table,
then one section per question with its budget, table and figure, then the records.

Nothing here reads the clock, the machine or a run directory: the same records give the same
REPORT.md, byte for byte, on any machine (tests/test_report.py checks the committed one).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil

from normlab.core.tables import markdown_table
from normlab.report import claims, design, figures, power, records, stats, tables
from normlab.trainer.loop import duration

REPORT_FILE, FIGURES_DIR = "REPORT.md", "figures"
HOLM = (
    "**How to read it.** Each mean over seeds is followed by its 95% interval (Student's t, n - 1 "
    "degrees of freedom). Claims compare cells that share seeds (initial weights and data "
    "order), so each estimate is the mean of the per-seed differences A - B, oriented so that "
    "a positive value favours A, with a paired t interval; an interaction's sides are each a "
    "per-seed difference (accuracy at the largest batch minus at the smallest); the cost claim "
    "pairs the benchmark's rounds. A claim that A beats B is *supported* when the interval lies "
    "above 0, *contradicted* when it lies below, *inconclusive* when it contains 0. Over the "
    "table, verdicts are held to Holm's rule at family-wise level 0.05: a claim whose p-value "
    "Holm does not reject is inconclusive. A diverged run counts at chance accuracy and as "
    "never reaching a threshold; a run that never reaches a threshold is left out of that "
    "interval and counted (k of n). Intervals are clipped to what the quantity can take "
    "(accuracy to [0, 100]%, differences to +-100 points, interactions to +-200, times to "
    ">= 0) and then say '(clipped)'."
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
        body.append(line)
    header = ["cell", "seeds", "diverged", "test accuracy"]
    header += [f"steps to {threshold:.0%} validation accuracy"] if with_steps else []
    return markdown_table(header, body) if body else "Not yet trained."


def _rows_section(p, title: str, section: str, rows, figure: str | None = None) -> str:
    """A section of per-cell rows: its budget, its table, its validation-curve figure."""
    threshold = p.lstm_threshold if section.startswith("lstm") else p.cnn_threshold
    caption = f"{title.split(':')[0]}: validation accuracy, mean and 95% band"
    if section == "lstm":
        caption = ("LSTM: training loss; validation accuracy with population statistics; "
                   "recurrent batch norm's validation accuracy by population method")  # fmt: skip
    budget = design.budget(p, section, power.seeds_text(p, section))
    return _section(f"## {title}", f"Budget: {budget}.",
                    _rows_table(rows, threshold), _figure(figure, caption))  # fmt: skip


def header(ctx: tables.Context, sessions: list[dict], jobs: list, missing: int, shown: str) -> str:
    p = ctx.preset
    commits = collections.Counter(r["commit"] for r in ctx.records)
    cpus = collections.Counter(r["cpu"] for r in ctx.records)
    tfs = sorted({r["tensorflow"] for r in ctx.records})
    planned, total = sum(design.seconds(p, j) for j in jobs), len(jobs)
    measured, at_once = records.measured(sessions, bold="**")
    made = (
        f"; made by the code at commit{'s' if len(commits) > 1 else ''} "
        + ", ".join(f"{c} ({n})" for c, n in commits.most_common())
        + f".\n- Machine: {', '.join(f'{c} ({n} records)' for c, n in cpus.most_common())}; "
        f"TensorFlow {', '.join(tfs)}"
        if ctx.records
        else ""
    )
    pending = sum(j.pending for j in jobs)
    return _section(
        "# normlab: which normalization, and why",
        f"Written by `report.py --preset={p.name} --write` from the {len(ctx.records)} records in "
        f"`{shown}/` (preset **{p.name}**: {p.description}); nothing in it is "
        "typed by hand. Train what is missing and rewrite it: "
        f"`report.py --preset={p.name} --jobs=2 --commit_records` "
        '(BUILD_NOTES.md, "The report\'s suite").',
        f"- Records: {len(ctx.records)} of {total} planned jobs"
        + (f" (**{missing} missing**: the claims they feed say *not tested*)" if missing else "")
        + (f"; {pending} of them wait for their cell's learning rate (section tune)"
           if pending else "")  # fmt: skip
        + made
        + ".\n"
        f"- Suite wall time, measured: {measured}; predicted by the cost model of `--plan` "
        f"(predicted, not measured): {design.predicted(planned, sorted({2, *at_once}))}.\n"
        f"- Time not spent training: {records.overhead_text(ctx.records)}.",
        "" if ctx.records else "**No record yet**: this page states the design, fixed before "
        "the runs; every claim is not yet trained (the pilot's numbers below only fix the seeds).",
    )


def answer(ctx: tables.Context, results: dict, cnn_rows: list[tables.Row], sweep) -> str:
    rank = tables.ranking(cnn_rows)
    if rank is None:
        best = "not yet trained"
    elif not rank.tied:
        best = (f"**{rank.leader} norm**: its paired lead over every other norm lies above 0 "
                "under Holm's rule")  # fmt: skip
    else:
        best = (
            f"**{rank.leader} norm** has the highest mean; its lead is not established over "
            f"{', '.join(rank.tied)} (paired intervals under Holm's rule, as the claims)"
        )

    def v(cid: str) -> str:
        r = results[cid]
        return f"{r.plainly()}: **{r.verdict}** (claim {claims.CLAIMS.index(r.claim) + 1})"

    ranked = sorted((r for r in cnn_rows if r.acc), key=lambda r: -r.acc.mean)
    if ranked:
        best += "; by mean test accuracy: " + ", ".join(
            f"{r.label} {100 * r.acc.mean:.2f}%" for r in ranked
        )
    gaps = [
        f"batch {b:g}: {_acc(r.gap.get('train_batch'))} / {_acc(r.gap.get('val_batch'))} / "
        f"{_acc(r.gap.get('val_population'))}"
        for b, r in sweep.get("batch", []) if r.gap
    ]  # fmt: skip
    rows = [
        [
            "Which normalization works best here (CNN, Fashion-MNIST)?",
            best + f"; batch norm over no normalization: {v('bn_acc')}",
            "table cnn, claims 1, 4",
        ],
        [
            "Why does batch norm help?",
            f"fewer steps: {v('bn_speed')}; higher learning rates: {v('bn_lr')}",
            "tables cnn, lr, inside",
        ],
        [
            "When does layer norm beat batch norm?",
            f"at the smallest batch: {v('ln_over_bn_small')}; in the LSTM: "
            f"{v('ln_over_bn_lstm')}; in ConvNets at batch {ctx.preset.reference_batch} batch "
            f"norm over layer norm: {v('bn_over_ln_cnn')}",
            "tables batch, lstm",
        ],
        [
            "Why?",
            f"batch norm's loss of accuracy from the largest batch to the smallest, minus layer "
            f"norm's: {v('bn_drop_over_ln')}; minus group norm's: {v('bn_drop_over_gn')}; batch "
            "norm's train-test inconsistency (Wu & Johnson: mini-batch statistics on training "
            "data / on validation data / population statistics on validation): "
            + ("; ".join(gaps) if gaps else "not yet trained")
            + "; layer and group norm compute the same statistics in training and test",
            "table batch",
        ],
    ]
    return _section(
        "## The answer",
        "Each answer gives the claim's estimate with its 95% interval and what the interval "
        "shows, then the verdict under Holm's rule (the claim's number in the table below).",
        markdown_table(["question", "answer", "rests on"], rows),
    )


def design_section(ctx: tables.Context, tuning: dict, chosen: dict) -> str:
    """What was fixed before the confirmatory runs: the rate grid and each choice, the
    thresholds, the population statistics, the pilot and the seeds by power."""
    p = ctx.preset
    grid = ", ".join(f"{r:g}" for r in p.lr_grid)
    tune_rows = [
        [key] + [f"{100 * v:.2f}%" if v is not None else "not yet trained"
                 for v in rates.values()] + [f"{chosen[key]:g}" if key in chosen else "-"]
        for key, rates in tuning.items()
    ]  # fmt: skip
    return _section(
        "## The design, fixed before the runs",
        f"**Learning rates.** Every CNN norm (and weight norm with its data-dependent init) "
        f"trains at each peak rate of the grid {grid} on seeds 0-{p.tune_seeds - 1} "
        f"(section tune: {design.budget(p, 'tune')}); each takes the rate of highest mean final "
        "validation accuracy (a tie: the smaller rate); then every seed trains at that rate, "
        "the tuning seeds' runs reused, and test accuracy is read at that rate only (Dodge et "
        "al. 2019). The batch sweep scales each norm's chosen rate linearly with the batch, "
        "with a linear warm-up (Goyal et al. 2017). Weight norm's inits also train with their "
        f"paper's optimizer, Adam at {p.adam_lr:g}.",
        markdown_table(["norm", *(f"validation accuracy at {r:g}" for r in p.lr_grid),
                        "chosen rate"], tune_rows),  # fmt: skip
        f"**Thresholds.** Steps to {p.cnn_threshold:.0%} validation accuracy (CNN) and "
        f"{p.lstm_threshold:.0%} (LSTM), interpolated between validations every "
        f"{p.eval_examples:,} training examples in the CNN and {p.lstm_eval_examples:,} in the "
        "LSTM (sections tune, cnn, wn_init, lstm, lstm_gain; the other sections validate once, "
        "at the end); a run that never reaches one is counted, not averaged in.",
        "**Batch norm's population statistics.** Every batch-norm number uses precise BN (Wu & "
        f"Johnson 2021): before each evaluation the population mean and variance are recomputed "
        f"with the current weights over the first {p.precise_examples:,} training examples in "
        "training-size batches (per time step in the LSTM). The moving averages train with "
        "bias correction (Kingma & Ba 2015's 1 - momentum^t); at the end each batch-norm run is "
        "also evaluated with them and with the plain average started at (0, 1) (exactly "
        "derived from them), and the LSTM's validation curves are drawn with all three.",
        f"**Seeds by power.** The pilot is the earlier design's {len(power.pilot_records())} "
        "records (report/results/pilot/"
        ": 2 epochs at one rate, 0.05, with plain moving averages; batch sweep 0.25 epochs; 3 "
        "seeds per cell, 5 for batch vs layer norm). For each claim, n is the smallest with "
        "n >= ((t(1 - a/2, n-1) + t(0.8, n-1)) s / d)^2: s the pilot's standard deviation of "
        "the per-seed differences, d the smaller of the paper's effect and the pilot's mean "
        "difference, a Holm's level at the claim's rank (ranked by the pilot's |mean| / s); at "
        f"least {p.min_seeds} seeds, at most the budget's cap per section "
        f"({', '.join(f'{k} {v}' for k, v in p.max_seeds)}). A cell takes the largest n of the "
        "claims it feeds. A capped claim states the smallest difference its n detects with "
        "80% power."
        + "".join(f" Claim {claims.CLAIMS.index(c) + 1} has no cells in the pilot: its spread "
                  "is read from the pilot's cells of the same comparison at SGD 0.05."
                  for c in claims.CLAIMS if c.pilot),  # fmt: skip
        markdown_table(["claim", "pilot n", "pilot s", "pilot mean", "d sought", "Holm level",
                        "n required", "n planned", "capped"], power.table_rows(p)),  # fmt: skip
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
        if bn and bn.gap:
            line += [_acc(bn.gap.get(k)) for k in ("train_batch", "val_batch", "val_population")]
        body.append(line)
    head = [setting] + [f"{n}: test accuracy" for n in cells]
    if body and len(body[0]) > len(head):
        head += ["batch norm, mini-batch statistics: training data", "validation data",
                 "population statistics: validation data"]  # fmt: skip
    return _section(
        f"## {title}",
        f"Budget: {budget}.",
        markdown_table(head, [r + ["-"] * (len(head) - len(r)) for r in body])
        if body
        else "Not yet trained.",
        _figure(figure, f"{title}: test accuracy, mean and 95% interval"),
    )


def moving_section(rows: list[tables.Row]) -> str:
    """Batch norm's test accuracy with each population method, where the runs have them."""
    body = [
        [r.label, _acc(r.acc), _acc(r.moving.get("bias_corrected")), _acc(r.moving.get("plain"))]
        for r in rows
        if r.moving
    ]
    return _section(
        "## Batch norm's population statistics",
        "Test accuracy of the same weights with precise BN (the runs' own), with the "
        "bias-corrected moving averages, and with the plain moving averages started at (0, 1).",
        markdown_table(["cell", "precise BN", "bias-corrected moving averages",
                        "plain moving averages"], body)
        if body else "Not yet trained.",  # fmt: skip
    )


def impl_section(ctx: tables.Context, twin_fig) -> str:
    parity = ctx.one("parity")
    worst = {}
    for row in parity["result"]["rows"] if parity else []:
        key = (row["norm"], row["builtin_name"], row["dtype"])
        err = max(row["forward_rel"], *row["grad_rel"].values())
        worst[key] = max(worst.get(key, 0.0), err)
    parity_rows = [[n, b, d, f"{e:.1e}"] for (n, b, d), e in sorted(worst.items())]
    layers = [[r["config"]["norm"], x["layer"], x["builtin"], f"{x['forward_rel']:.1e}",
               f"{x['grad_rel']:.1e}", f"{x['custom_err64']:.1e} / {x['builtin_err64']:.1e}"]
              for r in ctx.runs for x in r.get("analyses", {}).get("layer_parity", [])]
    twin_rows = [[key, len(t["step"]), f"{t['distance']['builtin'][-1]:.1e}",
                  f"{t['distance']['perturbed'][-1]:.1e}"]
                 for key, t in twins_of(ctx).items() if t["step"]]  # fmt: skip
    layer_head = ["norm", "layer", "built-in", "output rel", "gradient rel",
                  "error vs float64 (normlab / built-in)"]  # fmt: skip
    twin_head = ["network, norm", "steps", "built-in: distance at the end",
                 "one-ulp control: distance at the end"]  # fmt: skip
    return _section(
        "## normlab vs TensorFlow's built-ins",
        "**Same inputs** (`parity.py`'s table: random inputs, every norm, built-in, shape and "
        "dtype): the largest relative difference of the output and of every gradient.",
        markdown_table(["norm", "built-in", "dtype", "largest relative difference"], parity_rows)
        if parity_rows
        else "Not yet measured.",
        f"**Same trained weights, same real batch** (seed {ctx.preset.tune_seeds} of section "
        "cnn, every norm layer; the last column is each side's largest absolute error against "
        "NumPy in float64):",
        markdown_table(layer_head, layers) if layers else "Not yet trained.",
        "**Trained in lock step** (twins: normlab's model, the built-in's from the same initial "
        "weights, and normlab's with every initial weight moved by one float32 ulp, trained by "
        "the trainer's step on the same batches). If the built-in drifts no further than the "
        "one-ulp control, the two implementations differ by rounding and nothing else; training "
        "amplifies any rounding difference at the same rate.",
        markdown_table(twin_head, twin_rows) if twin_rows else "Not yet trained.",
        _figure(twin_fig, "Twins trained in lock step: relative distance to normlab's model"),
    )


def twins_of(ctx: tables.Context) -> dict:
    return {f"{'LSTM' if r['config']['arch'] == 'lstm' else 'CNN'} {r['config']['norm']}":
            r["analyses"]["twins"]
            for r in ctx.runs if "twins" in r.get("analyses", {})}  # fmt: skip


def inside_rows(ctx: tables.Context) -> list[dict]:
    out = []
    for norm in design.CNN_NORMS:
        done = [r for r in ctx.select(sections="cnn", norm=norm, seed=0)
                if r["status"] == records.COMPLETE]  # fmt: skip
        for layer, values in (done[0] if done else {}).get("inside", {}).items():
            if not layer.endswith("_norm"):
                out.append({"norm": norm, "layer": layer, **values})
    return out


def inside_section(rows: list[dict], figure) -> str:
    def pair(p):
        return "-" if not p else f"{p[0]:.3g} -> {p[1]:.3g}"

    body = [[r["norm"], r["layer"], pair(r.get("pre_std")), pair(r.get("post_std")),
             pair(r.get("grad_norm"))] for r in rows]  # fmt: skip
    return _section(
        "## Inside the network",
        "Seed 0 of section cnn: each hidden layer's output std (over the whole tensor) before its "
        "norm and after it, and the L2 norm of its gradient, at the first and the last summary.",
        markdown_table(["norm", "layer", "std before the norm", "std after", "gradient norm"], body)
        if body
        else "Not yet trained.",
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
        "turns in a fresh random order each round (bench.model's timer), the suite's only job "
        "then (with --jobs=K it runs alone after the others); mean over rounds with its 95% "
        "interval. The report's only per-norm speed.",
        markdown_table(["norm", "ms per step", "vs none"], body) if body else "Not yet measured.",
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
        body.append([f"`{r['name']}`", ", ".join(r["sections"]), outcome,
                     duration(r.get("wall_seconds")), r["commit"]])  # fmt: skip
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
    p = preset
    tuning = tables.tuning(tables.Context(p, all_records))
    chosen = tables.chosen_rates(tuning)
    jobs = design.plan(p, "", examples or design.TRAIN_EXAMPLES, chosen)
    names = {j.name: j for j in jobs}
    # A record's sections are the plan's: a tuning run trained before the choice says "tune"
    # only, and is also the chosen rate's cnn run.
    ctx = tables.Context(p, {k: dict(r, sections=list(names[k].sections))
                             for k, r in all_records.items() if k in names})  # fmt: skip
    results = claims.evaluate(ctx.records, ctx)
    by_id = {r.claim.id: r for r in results}
    fig_dir = os.path.join(out_dir, FIGURES_DIR)
    shutil.rmtree(fig_dir, ignore_errors=True)  # figures of older designs go
    cnn = tables.comparison(ctx, "cnn", design.CNN_NORMS)
    lstm = tables.comparison(ctx, "lstm", design.LSTM_NORMS)
    batch, lr = tables.sweep(ctx, "batch", "batch_size"), tables.sweep(ctx, "lr", "learning_rate")
    wn = [
        tables.row(ctx, f"weight, init {i}, {opt}", ctx.select(sections=s, wn_init=i))
        for s, opt in (("wn_init", "SGD"), ("wn_adam", "Adam"))
        for i in ("norm", "data")
        if ctx.select(sections=s, wn_init=i)
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
    bn_rows = [dataclasses.replace(r, label=f"{arch}, batch norm") for arch, rows in
               (("CNN", cnn), ("LSTM", lstm)) for r in rows if r.norm == "batch"]
    bn_rows += [dataclasses.replace(r, label=f"CNN, batch norm, {what} {v:g}")
                for what, cs in (("batch", batch), ("peak rate", lr))
                for v, r in cs.get("batch", [])]  # fmt: skip
    f = {
        "cnn": figures.curves(cnn, fig_dir, "cnn.png", "CNN", p.cnn_threshold),
        "lstm": figures.lstm(lstm, fig_dir, p.lstm_threshold),
        "batch": figures.sweep([("CNN: batch size", batch, "batch size")], fig_dir, "batch.png"),
        "twins": figures.twins(twins_of(ctx), fig_dir),
        "inside": figures.inside(inside, fig_dir),
        "cost": figures.cost(cost, fig_dir),
    }
    missing = len(set(names) - set(all_records))
    text = _section(
        header(
            ctx, records.sessions(results_dir, p.name), jobs, missing, _shown(results_dir, p.name)
        ),
        answer(ctx, by_id, cnn, batch),
        claims_section(results),
        design_section(ctx, tuning, chosen),
        _rows_section(p, "CNN: with and without normalization", "cnn", cnn, f["cnn"]),
        _rows_section(p, "Weight norm's initialisation", "wn_init", wn),
        sweep_section("CNN: learning rate 10x the grid's middle",
                      design.budget(p, "lr", power.seeds_text(p, "lr")), lr,
                      "peak learning rate", None),
        sweep_section("CNN: batch size", design.budget(p, "batch", power.seeds_text(p, "batch")),
                      batch, "batch size", f["batch"]),  # fmt: skip
        _rows_section(p, "LSTM: recurrent normalization", "lstm", lstm, f["lstm"]),
        _rows_section(p, "Recurrent batch norm's initial gain", "lstm_gain", gain),
        moving_section(bn_rows),
        impl_section(ctx, f["twins"]),
        inside_section(inside, f["inside"]),
        cost_section(ctx, cost, f["cost"]),
        appendix(ctx) if ctx.records else "",
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, REPORT_FILE)
    records.write_text(path, text.rstrip() + "\n")
    return path
