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
    """One cell over seeds."""

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
    bn_eval: stats.Estimate | None = None  # batch statistics at test time
    gap: stats.Estimate | None = None  # inference minus training mode


def row(ctx: Context, label: str, rs: list[dict]) -> Row:
    done = [r for r in rs if r["status"] == records.COMPLETE]
    steps = [ctx.metric(r, claims.STEPS) for r in done]
    evals = [r["analyses"]["bn_eval"] for r in done if "bn_eval" in r.get("analyses", {})]
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
        bn_eval=stats.mean_ci([e["batch_stats_accuracy"] for e in evals], ACC_BOUNDS),
        gap=stats.mean_ci(
            [e["inference_accuracy"] - e["batch_stats_accuracy"] for e in evals], (-1.0, 1.0)
        ),
    )


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
    """The leader of a comparison and how its lead stands: 'best' only if the paired interval
    of its lead over every other norm lies above 0; otherwise tied with those it does not."""

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
    tied = [n for n, e in leads.items() if e is None or not (e.has_interval and e.low > 0)]
    return Ranking(leader.label, tied, leads)
