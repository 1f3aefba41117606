"""The claims table: what the papers claim, as data, and its evaluation from the records.

Each claim compares side A with side B on one metric, oriented so that a positive difference
favours A: "A beats B" (GREATER) or "A matches B within a margin" (EQUIVALENT). A side is a
selector over the records (section, norm, batch size, ...); symbolic values ("min_batch",
"lr10") are resolved against the preset, so the same table serves every preset. Runs of the
two sides share seeds (initial-weight stream and data order), so differences are paired by
seed; the cost benchmark's are paired by round. The rules (stats.py): t intervals, TOST for
EQUIVALENT, Holm over the whole table. A diverged run counts at chance accuracy (1 / classes)
and as never reaching a threshold: shown as "k of n diverged" wherever it enters.
"""

from __future__ import annotations

import dataclasses

from normlab.report import stats

GREATER, EQUIVALENT = "greater", "equivalent"
EQUIVALENCE_MARGIN = 0.01  # +-1 accuracy point, fixed before any run
ACCURACY, STEPS, MS = "test_accuracy", "steps_to_threshold", "ms_per_step"
HIGHER_IS_BETTER = {ACCURACY: True, STEPS: False, MS: False}
UNITS = {ACCURACY: (100, 2, " pts"), STEPS: (1, 0, " steps"), MS: (1, 2, " ms")}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of a paper as a test: A vs B on `metric`. A side with a "minus" selector is a
    contrast: per seed, its value minus the value of the "minus" cell (an interaction).
    `paper_effect` is the difference the paper reports on the metric's scale, when it reports
    one that transfers (the power rule uses the smaller of it and the pilot's); `pilot` names
    the pilot's cells when they differ from the claim's own."""

    id: str
    text: str
    source: str
    metric: str
    a: dict
    b: dict
    kind: str = GREATER
    paper_effect: float | None = None
    pilot: tuple[dict, dict] | None = None

    def sides(self) -> tuple[dict, ...]:
        """Every cell selector the claim reads (the contrasts' subtracted cells too)."""
        return tuple(s for side in (self.a, self.b) for s in (side, side.get("minus")) if s)


def _s(section, norm, **kw) -> dict:
    return dict(sections=section, norm=norm, **kw)


def _drop(norm: str) -> dict:
    """norm's accuracy at the largest batch minus at the smallest, per seed (batch sweep)."""
    return _s("batch", norm, batch_size="max_batch",
              minus=_s("batch", norm, batch_size="min_batch"))  # fmt: skip


_WN = ("Salimans & Kingma 2016 (Adam; v ~ N(0, 0.05), g and b from one batch)")
CLAIMS = (
    Claim("bn_acc", "Batch norm reaches a higher test accuracy than no normalization",
          "Ioffe & Szegedy 2015", ACCURACY, _s("cnn", "batch"), _s("cnn", "none")),
    Claim("bn_speed", "Batch norm reaches the threshold in fewer steps than no normalization",
          "Ioffe & Szegedy 2015 (14x fewer on Inception)", STEPS, _s("cnn", "batch"),
          _s("cnn", "none")),
    Claim("bn_lr", "At 10x the base learning rate, batch norm trains and no norm does not",
          "Ioffe & Szegedy 2015", ACCURACY, _s("lr", "batch", learning_rate="lr10"),
          _s("lr", "none", learning_rate="lr10")),
    Claim("bn_over_ln_cnn", "Batch norm beats layer norm in ConvNets",
          "Ba, Kiros & Hinton 2016, section 6.7; Wu & He 2018 (23.6% vs 25.3% error)", ACCURACY,
          _s("cnn", "batch"), _s("cnn", "layer"), paper_effect=0.017),
    Claim("ln_over_bn_small", "Layer norm beats batch norm at the smallest batch",
          "Ba et al. 2016; Wu & He 2018", ACCURACY, _s("batch", "layer", batch_size="min_batch"),
          _s("batch", "batch", batch_size="min_batch")),
    Claim("gn_over_bn_small", "Group norm beats batch norm at the smallest batch",
          "Wu & He 2018 (24.1% vs 34.7% error at batch 2)", ACCURACY,
          _s("batch", "group", batch_size="min_batch"),
          _s("batch", "batch", batch_size="min_batch"), paper_effect=0.106),
    Claim("bn_drop_over_ln", "Batch norm loses more accuracy than layer norm from the largest "
          "batch to the smallest (the interaction, paired by seed)", "Ba et al. 2016; Wu & He "
          "2018", ACCURACY, _drop("batch"), _drop("layer")),
    Claim("bn_drop_over_gn", "Batch norm loses more accuracy than group norm from the largest "
          "batch to the smallest (the interaction, paired by seed)", "Wu & He 2018 (BN 23.6% "
          "to 34.7% error from batch 32 to 2, GN 24.1% at both)", ACCURACY, _drop("batch"),
          _drop("group"), paper_effect=0.111),
    Claim("ln_over_bn_lstm", "Layer norm beats recurrent batch norm in the LSTM (test accuracy, "
          "population statistics)", "Ba et al. 2016 vs Cooijmans et al. 2016", ACCURACY,
          _s("lstm", "layer"), _s("lstm", "batch")),
    Claim("ln_lstm_speed", "The LN-LSTM reaches the threshold in fewer steps than the LSTM",
          "Ba et al. 2016", STEPS, _s("lstm", "layer"), _s("lstm", "none")),
    Claim("bn_lstm_speed", "Recurrent batch norm reaches the threshold in fewer steps than "
          "the LSTM (validation with population statistics)", "Cooijmans et al. 2016", STEPS,
          _s("lstm", "batch"), _s("lstm", "none")),
    Claim("bn_gain", "Recurrent batch norm with gain 0.1 beats gain 1.0",
          "Cooijmans et al. 2016, section 4", ACCURACY,
          _s("lstm_gain", "batch", recurrent_gain=0.1),
          _s("lstm_gain", "batch", recurrent_gain=1.0)),
    Claim("wn_cost", "Weight norm costs less per training step than batch norm",
          "Salimans & Kingma 2016 (BN ~16% slower)", MS, dict(kind="cost", measure="weight"),
          dict(kind="cost", measure="batch")),
    Claim("wn_init", "Weight norm's data-dependent init beats g = ||v|| (SGD, each at its "
          "chosen rate)", _WN, ACCURACY, _s("wn_init", "weight", wn_init="data"),
          _s("wn_init", "weight", wn_init="norm")),
    Claim("wn_init_adam", "Weight norm's data-dependent init beats g = ||v|| (Adam 1e-3)", _WN,
          ACCURACY, _s("wn_adam", "weight", wn_init="data"),
          _s("wn_adam", "weight", wn_init="norm"),
          pilot=(_s("wn_init", "weight", wn_init="data"), _s("wn_init", "weight", wn_init="norm"))),
)  # fmt: skip


def symbols(preset) -> dict:
    """The concrete values of a preset's symbolic selector values."""
    return {
        "min_batch": min(preset.batch_sizes),
        "max_batch": max(preset.batch_sizes),
        "lr10": preset.high_rate,
    }


def uses(side: dict, facts: dict, symbols_: dict | None = None) -> bool:
    """Whether a job or record with `facts` (design.facts) belongs to `side`."""
    for key, want in side.items():
        if key in ("kind", "measure", "minus"):
            continue  # checked below; which of a measurement's results a side reads
        want = (symbols_ or {}).get(want, want) if isinstance(want, str) else want
        if isinstance(want, str) and want in ("min_batch", "max_batch", "lr10"):
            continue  # unresolved symbol (planning without a preset): any value
        if key == "sections":
            if want not in facts["sections"]:
                return False
        elif facts.get(key) != want:
            return False
    return facts.get("kind", "run") == side.get("kind", "run")


@dataclasses.dataclass
class Side:
    """One side's values: {seed or round: value}, and how many of its runs diverged or never
    reached a threshold (both shown as k of n)."""

    values: dict
    runs: int
    diverged: int = 0
    not_reached: int = 0


@dataclasses.dataclass
class Result:
    claim: Claim
    a: Side
    b: Side
    estimate: stats.Estimate | None  # of A - B, oriented: positive favours A
    raw: str  # the verdict by the claim's own interval, before Holm
    p: float
    verdict: str = stats.NOT_TESTED  # after Holm over the table

    def evidence(self) -> str:
        scale, digits, unit = UNITS[self.claim.metric]
        e = self.estimate
        notes = [
            f"{name}: {k} of {side.runs} {what}"
            for name, side in (("A", self.a), ("B", self.b))
            for k, what in ((side.diverged, "diverged"), (side.not_reached, "not reached"))
            if k
        ]
        if e is None:
            shown = "not yet trained" if not (self.a.runs or self.b.runs) else "no paired runs"
        else:
            shown = e.format(scale, digits, unit)
        margin = (
            f" (margin +-{EQUIVALENCE_MARGIN * 100:g} pts)" if self.claim.kind == EQUIVALENT else ""
        )
        return shown + margin + (f"; {', '.join(notes)}" if notes else "")


    def plainly(self) -> str:
        """What the interval shows, in words: '+4.60 pts, interval [-1.62, 10.82] contains 0
        with 3 seeds'; 'not yet trained' without runs."""
        e = self.estimate
        if e is None:
            return "not yet trained" if not (self.a.runs or self.b.runs) else "no paired runs"
        scale, digits, unit = UNITS[self.claim.metric]
        n = f"{e.n} {'rounds' if self.claim.metric == MS else 'seeds'}"
        head = f"{e.mean * scale:+.{digits}f}{unit}"
        if not e.has_interval:
            return f"{head}, no interval with {n}"
        where = "contains 0" if e.low <= 0 <= e.high else ("lies above 0" if e.low > 0
                                                           else "lies below 0")  # fmt: skip
        text = f"{head}, interval [{e.low * scale:.{digits}f}, {e.high * scale:.{digits}f}] " \
               f"{where} with {n}"  # fmt: skip
        if self.raw != self.verdict:
            text += f" ({self.raw} by its own interval, not under Holm's rule)"
        return text


def side_values(side: dict, records: list[dict], metric: str, ctx) -> Side:
    """The per-seed (per-round) values of one side's records; for a contrast, per seed its
    cell's value minus its "minus" cell's (seeds both have), runs and failures of both."""
    if "minus" in side:
        plus = side_values({k: v for k, v in side.items() if k != "minus"}, records, metric, ctx)
        minus = side_values(side["minus"], records, metric, ctx)
        shared = plus.values.keys() & minus.values.keys()
        return Side({k: plus.values[k] - minus.values[k] for k in sorted(shared)},
                    plus.runs + minus.runs, plus.diverged + minus.diverged,
                    plus.not_reached + minus.not_reached)  # fmt: skip
    mine = [r for r in records if uses(side, ctx.facts(r), ctx.symbols)]
    if side.get("kind") == "cost":
        rounds = mine[0]["result"]["ms_per_step"].get(side["measure"], []) if mine else []
        return Side(dict(enumerate(rounds)), len(rounds))
    values, diverged, unreached = {}, 0, 0
    for r in mine:
        value = ctx.metric(r, metric)
        diverged += r["status"] == "diverged"
        if value is None:
            unreached += r["status"] != "diverged"
            continue
        values[r["config"]["seed"]] = value
    return Side(values, len(mine), diverged, unreached)


def evaluate(records: list[dict], ctx) -> list[Result]:
    """Every claim's estimate and verdict; verdicts held to Holm's rule over the table.
    `ctx` gives facts(record), metric(record, name) and the preset's symbols (report.tables)."""
    out = []
    for claim in CLAIMS:
        a = side_values(claim.a, records, claim.metric, ctx)
        b = side_values(claim.b, records, claim.metric, ctx)
        sign = 1 if HIGHER_IS_BETTER[claim.metric] else -1
        width = 2.0 if "minus" in claim.a else 1.0  # a contrast of differences: +-2
        bounds = (-width, width) if claim.metric == ACCURACY else None
        oriented = (
            {k: sign * v for k, v in a.values.items()},
            {k: sign * v for k, v in b.values.items()},
        )
        e = stats.paired_ci(*oriented, bounds=bounds) if a.values and b.values else None
        if claim.kind == EQUIVALENT:
            raw, p = stats.tost(e, EQUIVALENCE_MARGIN)
        else:
            raw, p = stats.verdict_greater(e), (e.p if e else float("nan"))
        out.append(Result(claim, a, b, e, raw, p))
    rejected = stats.holm([r.p for r in out])
    for r, rejects in zip(out, rejected):
        if r.raw == stats.NOT_TESTED:
            r.verdict = stats.NOT_TESTED
        else:
            r.verdict = r.raw if rejects and r.raw != stats.INCONCLUSIVE else stats.INCONCLUSIVE
    return out
