"""Seeds by power, fixed before the confirmatory runs from the pilot's records.

For a paired comparison whose per-seed differences have standard deviation s, n seeds detect
a true difference d at two-sided level a with power 1 - b when
n >= ((t(1 - a/2, n-1) + t(1 - b, n-1)) s / d)^2 (stats.seeds_for_power). Here s is the
pilot's (the records of the earlier design, report/results/pilot/: the same network, 3 or 5
seeds); d is the smaller of the effect the claim's paper reports (when it reports one on
this scale) and the pilot's mean difference; a is the level Holm's rule gives the claim at its
rank, ranks ordered by the pilot's standardized effect |mean| / s, largest first (rank i of m
tested at 0.05 / (m - i + 1)). n is at least the preset's min_seeds and at most the budget's
cap for the claim's cells; a capped claim states the smallest effect its n detects.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics

from normlab.report import claims, design, stats

PILOT = "pilot"
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "report",
                       "results")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Power:
    """One claim's seeds: the pilot's paired spread and mean, the effect sought, its Holm
    level, the n the rule requires, the n planned, the cap, and what a capped n detects."""

    claim: claims.Claim
    pilot_n: int
    sd: float | None
    pilot_mean: float | None
    effect: float | None
    effect_from: str
    alpha: float
    required: int | None
    n: int
    cap: int

    @property
    def capped(self) -> bool:
        return self.required is not None and self.required > self.cap

    @property
    def detectable(self) -> float | None:
        """The smallest true difference the planned n detects with the preset's power."""
        if self.sd is None or not self.sd > 0:
            return None
        return stats.detectable_effect(self.sd, self.n, self.alpha)


def pilot_records() -> tuple[dict, ...]:
    """The pilot's records (read once per results folder)."""
    return _records(RESULTS)


@functools.lru_cache(maxsize=4)
def _records(results: str) -> tuple[dict, ...]:
    from normlab.report import records

    return tuple(records.load_all(results, PILOT).values())


def pilot_differences(claim: claims.Claim, recs) -> list[float]:
    """The pilot's per-seed (per-round) differences A - B, oriented so + favours A."""
    from normlab.report import tables

    ctx = tables.Context(design.FULL, {r["name"]: r for r in recs})
    a, b = claim.pilot or (claim.a, claim.b)
    va = claims.side_values(a, ctx.records, claim.metric, ctx).values
    vb = claims.side_values(b, ctx.records, claim.metric, ctx).values
    sign = 1 if claims.HIGHER_IS_BETTER[claim.metric] else -1
    return [sign * (va[k] - vb[k]) for k in sorted(va.keys() & vb.keys())]


def _cells_of(preset: design.Preset, claim: claims.Claim) -> list[dict]:
    from normlab.trainer.config import Config

    syms, out = claims.symbols(preset), []
    for cell in design.cells(preset):
        config = {"batch_size": preset.reference_batch, "wn_init": "norm",
                  "recurrent_gain": Config.recurrent_gain, **cell}
        facts = design.facts((cell["section"],), config)
        if any(claims.uses(side, facts, syms) for side in claim.sides()):
            out.append(cell)
    return out


_ANALYSES: dict = {}


def analysis(preset: design.Preset) -> tuple[Power, ...]:
    """Every claim's Power, in the claims table's order (computed once per preset)."""
    key = repr(preset)
    if key not in _ANALYSES:
        _ANALYSES[key] = _analysis(preset)
    return _ANALYSES[key]


def _analysis(preset: design.Preset) -> tuple[Power, ...]:
    recs = pilot_records() if preset.power_from else ()
    if preset.power_from and not recs:
        from normlab.trainer.errors import UsageError

        raise UsageError(
            f"preset {preset.name} fixes its seeds from the pilot's records, which are not in "
            f"{os.path.join(RESULTS, PILOT)}: run report.py from a normlab checkout."
        )
    found = {}
    for claim in claims.CLAIMS:
        d = pilot_differences(claim, recs) if recs else []
        sd = statistics.stdev(d) if len(d) > 1 else None
        found[claim.id] = (d, sd, statistics.fmean(d) if d else None)
    ranked = sorted(
        claims.CLAIMS,
        key=lambda c: -(abs(found[c.id][2]) / found[c.id][1]) if found[c.id][1] else 0.0,
    )
    m, out = len(ranked), {}
    for i, claim in enumerate(ranked):
        d, sd, mean = found[claim.id]
        alpha = stats.FAMILY_ALPHA / (m - i)
        cells = _cells_of(preset, claim)
        cap = min((preset.seeds_cap(c["section"]) for c in cells), default=preset.min_seeds)
        if claim.metric == claims.MS:  # the cost benchmark's rounds, fixed by the preset
            cap = preset.cost_rounds
        effect, source, required = None, "", None
        if sd and mean:
            effect, source = abs(mean), "pilot"
            if claim.paper_effect is not None and claim.paper_effect < effect:
                effect, source = claim.paper_effect, "paper"
            required = stats.seeds_for_power(sd, effect, alpha, preset.power)
        n = cap if claim.metric == claims.MS else min(max(required or 0, preset.min_seeds), cap)
        out[claim.id] = Power(claim, len(d), sd, mean, effect, source, alpha, required, n, cap)
    return tuple(out[c.id] for c in claims.CLAIMS)


def cell_seeds(preset: design.Preset) -> dict:
    """{design.cell_key: seeds}: the largest n of the claims a cell feeds (min_seeds if none)."""
    out = {}
    for p in analysis(preset):
        if p.claim.metric == claims.MS:
            continue  # the cost benchmark's rounds, not seeds
        for cell in _cells_of(preset, p.claim):
            key = design.cell_key(cell)
            out[key] = max(out.get(key, preset.min_seeds), p.n)
    return out


def table_rows(p: design.Preset) -> list[list]:
    """The page's power table: per claim, the pilot's n, s and mean, the effect sought, the
    Holm level, the n required, the n planned and, when capped, the effect it detects."""
    rows = []
    for i, w in enumerate(analysis(p), 1):
        scale, digits, unit = claims.UNITS[w.claim.metric]

        def f(x, scale=scale, digits=digits, unit=unit):
            return "-" if x is None else f"{x * scale:.{digits}f}{unit}"

        effect = f"{f(w.effect)} ({w.effect_from})" if w.effect is not None else "-"
        capped = f"capped: detects {f(w.detectable)}" if w.capped else ""
        n = f"{p.cost_rounds} rounds" if w.claim.metric == claims.MS else str(w.n)
        rows.append([i, w.pilot_n, f(w.sd), f(w.pilot_mean), effect, f"{w.alpha:.4f}",
                     w.required if w.required is not None else "-", n, capped])  # fmt: skip
    return rows


def seeds_text(p: design.Preset, section: str) -> str:
    """A section's planned seeds per cell, in words ('seeds 0-7: none, batch; 0-4: ...')."""
    by_n: dict = {}
    plan_seeds = cell_seeds(p)
    for cell in design.cells(p, plan_seeds):
        if cell["section"] == section:
            label = cell["norm"] + "".join(
                f" {form.format(cell[k])}"
                for k, form in (("batch_size", "b{}"), ("recurrent_gain", "gain {}"),
                                ("wn_init", "init {}")) if k in cell)  # fmt: skip
            by_n.setdefault(cell["seeds"], []).append(label)
    return "seeds " + "; ".join(f"0-{n - 1} ({', '.join(cs)})" for n, cs in sorted(by_n.items()))
