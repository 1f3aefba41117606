"""The report's numbers, computed from the records alone: per-norm rows, sweeps, rankings.

A run's metrics: test accuracy (a diverged run counts at chance, 1 / classes); steps to the
preset's threshold of validation accuracy, interpolated linearly between evaluations (from
chance at step 0), None when never reached. Every mean over seeds is a stats.Estimate with
its 95% t interval, clipped to [0, 1] for accuracies and to >= 0 for steps and times.
"""

from __future__ import annotations

import dataclasses

from normlab.report import claims, design, records, stats

ACC_BOUNDS, TIME_BOUNDS = (0.0, 1.0), (0.0, float("inf"))


def steps_to(curve: dict, level: float, chance: float) -> float | None:
    """The step at which validation accuracy first reaches `level`, interpolated between the
    evaluation before and the one reaching it (step 0 at chance); None if never reached."""
    prev_step, prev_acc = 0.0, chance
    for step, acc in zip(curve["step"], curve["accuracy"]):
        if acc >= level:
            if acc == prev_acc:
                return float(step)
            return prev_step + (level - prev_acc) / (acc - prev_acc) * (step - prev_step)
        prev_step, prev_acc = float(step), acc
    return None


class Context:
    """The preset and records a report is computed from; what claims.evaluate needs."""

    def __init__(self, preset: design.Preset, all_records: dict[str, dict]):
        self.preset, self.symbols = preset, claims.symbols(preset)
        self.records = list(all_records.values())
        self.runs = [r for r in self.records if r["kind"] == "run"]

    def facts(self, r: dict) -> dict:
        return design.facts(r["sections"], r.get("config", {}), r["kind"])

    def chance(self, r: dict) -> float:
        return 1.0 / r.get("classes", 10)

    def threshold(self, r: dict) -> float:
        lstm = r["config"]["arch"] == "lstm"
        return self.preset.lstm_threshold if lstm else self.preset.cnn_threshold

    def metric(self, r: dict, name: str) -> float | None:
        complete = r["status"] == records.COMPLETE
        if name == claims.ACCURACY:
            return r["final"]["test_accuracy"] if complete else self.chance(r)
        if name == claims.STEPS:
            return steps_to(r["curve"], self.threshold(r), self.chance(r)) if complete else None
        raise ValueError(name)

    def select(self, **side) -> list[dict]:
        return [r for r in self.records if claims.uses(side, self.facts(r), self.symbols)]

    def one(self, kind: str) -> dict | None:
        return next((r for r in self.records if r["kind"] == kind), None)


@dataclasses.dataclass
class Row:
    """One cell over seeds. For batch norm: test accuracy with the plain and bias-corrected
    moving averages (the run's own uses precise BN), and Wu & Johnson's accuracies with
    mini-batch statistics on training data and on validation data, and with population
    statistics on validation data."""

    label: str
    norm: str
    runs: int
    diverged: int
    acc: stats.Estimate | None
    steps: stats.Estimate | None
    reached: int
    ms: stats.Estimate | None
    by_seed: dict  # seed -> test accuracy (diverged: chance)
    curves: list  # (steps, accuracies) per complete seed
    moving: dict = dataclasses.field(default_factory=dict)  # method -> test accuracy Estimate
    gap: dict = dataclasses.field(default_factory=dict)  # W&J's three accuracies, Estimates
    records: list = dataclasses.field(default_factory=list)


_GAP = (("train_batch", "train_accuracy_batch_stats"), ("val_batch", "val_accuracy_batch_stats"))


def row(ctx: Context, label: str, rs: list[dict]) -> Row:
    done = [r for r in rs if r["status"] == records.COMPLETE]
    steps = [ctx.metric(r, claims.STEPS) for r in done]
    bn = [r["analyses"]["bn_stats"] for r in done if "bn_stats" in r.get("analyses", {})]
    with_bn = [r for r in done if "bn_stats" in r.get("analyses", {})]
    moving = {m: stats.mean_ci([b.get(f"test_accuracy_{m}") for b in bn], ACC_BOUNDS)
              for m in ("plain", "bias_corrected")} if bn else {}  # fmt: skip
    gap = {k: stats.mean_ci([b.get(key) for b in bn], ACC_BOUNDS) for k, key in _GAP
           if any(key in b for b in bn)}  # fmt: skip
    if gap:
        gap["val_population"] = stats.mean_ci(
            [r["final"]["val_accuracy"] for r in with_bn], ACC_BOUNDS
        )
    return Row(
        label=label,
        norm=rs[0]["config"]["norm"] if rs else "",
        runs=len(rs),
        diverged=len(rs) - len(done),
        acc=stats.mean_ci([ctx.metric(r, claims.ACCURACY) for r in rs], ACC_BOUNDS),
        steps=stats.mean_ci([s for s in steps if s is not None], TIME_BOUNDS),
        reached=sum(s is not None for s in steps),
        ms=stats.mean_ci([r["ms_per_step"] for r in done], TIME_BOUNDS),
        by_seed={r["config"]["seed"]: ctx.metric(r, claims.ACCURACY) for r in rs},
        curves=[(r["curve"]["step"], r["curve"]["accuracy"]) for r in done],
        moving=moving,
        gap=gap,
        records=done,
    )


def tuning(ctx: Context) -> dict:
    """{tuned key: {rate: mean final validation accuracy over the tuning seeds, or None while
    a seed's record is missing}} (a diverged run counts at chance). Validation only: the
    choice never sees test."""
    p, out = ctx.preset, {}
    for key in design.TUNED:
        norm, _, init = key.partition("/")
        out[key] = {}
        for rate in p.lr_grid:
            rs = ctx.select(sections="tune", norm=norm, wn_init=init or "norm",
                            learning_rate=rate)  # fmt: skip
            seeds = {r["config"]["seed"] for r in rs}
            values = [
                r["final"]["val_accuracy"] if r["status"] == records.COMPLETE else ctx.chance(r)
                for r in rs
            ]
            complete = seeds >= set(range(p.tune_seeds))
            out[key][rate] = sum(values) / len(values) if complete and values else None
    return out


def chosen_rates(table: dict) -> dict:
    """{tuned key: the rate of highest mean validation accuracy (a tie: the smaller rate)},
    for the keys whose every rate has its tuning records."""
    return {
        key: max(sorted(rates), key=lambda r: (rates[r], -r))
        for key, rates in table.items()
        if rates and all(v is not None for v in rates.values())
    }


def comparison(ctx: Context, section: str, norms, **fixed) -> list[Row]:
    """One row per norm of a section (custom runs), in the order of `norms`."""
    out = []
    for norm in norms:
        rs = ctx.select(sections=section, norm=norm, **fixed)
        if rs:
            out.append(row(ctx, norm, rs))
    return out


def sweep(ctx: Context, section: str, setting: str) -> dict[str, list[tuple[float, Row]]]:
    """{norm: [(value of `setting`, Row)]} over a sweep's cells."""
    out: dict[str, list] = {}
    for r in ctx.select(sections=section):
        out.setdefault(r["config"]["norm"], set()).add(r["config"][setting])
    order = list(design.CNN_NORMS)
    return {
        norm: [
            (v, row(ctx, f"{norm} {v:g}", ctx.select(sections=section, norm=norm, **{setting: v})))
            for v in sorted(out[norm])
        ]
        for norm in sorted(out, key=order.index)
    }


@dataclasses.dataclass
class Ranking:
    """The leader of a comparison and how its lead stands, under the claims' rule: its paired
    lead over each other norm is tested, the p-values held to Holm's rule; it is 'best' only if
    every lead lies above 0 and Holm rejects every one; tied with the others."""

    leader: str
    tied: list[str]
    leads: dict  # norm -> paired estimate of leader minus norm


def ranking(rows: list[Row]) -> Ranking | None:
    rows = [r for r in rows if r.acc is not None]
    if not rows:
        return None
    leader = max(rows, key=lambda r: r.acc.mean)
    leads = {
        r.label: stats.paired_ci(leader.by_seed, r.by_seed, (-1.0, 1.0))
        for r in rows
        if r is not leader
    }
    names = list(leads)
    rejected = stats.holm([leads[n].p if leads[n] else float("nan") for n in names])
    tied = [
        n for n, rej in zip(names, rejected)
        if not (rej and leads[n] is not None and leads[n].has_interval and leads[n].low > 0)
    ]  # fmt: skip
    return Ranking(leader.label, tied, leads)
