"""The findings as a table of claims: each from a paper, tested on the runs, with a verdict.

CLAIMS is the table: each claim's text, source and where its evidence is, and a function of
the results that returns the evidence (effect sizes with 95% confidence intervals and seed
counts) and the verdict by the rule of report/stats.py. Accuracy differences are in percentage
points; a run that diverged counts at chance accuracy (it predicts nothing) in a difference.
"""

from __future__ import annotations

import dataclasses

from normlab.report import stats
from normlab.report.stats import Estimate, difference_ci
from normlab.report.tables import cell

# "Matches": an accuracy difference whose whole 95% interval lies within +-1 point.
EQUIVALENCE_MARGIN = 0.01
# A learning rate is usable for a norm when no seed diverged and its mean test accuracy is
# within this of the norm's best rate.
USABLE_MARGIN = 0.01
# The float32 parity tolerance (tests/numerics.py): 64 units in the last place.
PARITY_TOLERANCE = 64 * 2.0**-24


@dataclasses.dataclass
class Claim:
    number: int
    text: str
    source: str
    evidence: str
    verdict: str
    where: str


def _pts(e: Estimate | None) -> str:
    return "n/a" if e is None else e.format(100, 2, " pts")


def _difference(cells, a: str, b: str, value, chance: float) -> Estimate | None:
    """mean accuracy of norm a minus norm b at one sweep setting; diverged seeds at chance."""
    ca, cb = cell(cells, a, value), cell(cells, b, value)
    if not ca or not cb:
        return None
    return difference_ci(*(c.test_accs + [chance] * c.diverged for c in (ca, cb)))


def _norm_difference(comparison, a: str, b: str) -> Estimate | None:
    rows = {x.norm: x for x in comparison.rows} if comparison else {}
    return difference_ci(rows[a].test_accs, rows[b].test_accs) if {a, b} <= set(rows) else None


def higher_learning_rates(r) -> tuple[str, str]:
    usable = {}
    for norm in ("none", "batch"):
        cells = [c for c in r.lr if c.norm == norm and c.test_acc is not None]
        best = max((c.test_acc.mean for c in cells), default=None)
        good = [
            c.setting for c in cells if not c.diverged and c.test_acc.mean >= best - USABLE_MARGIN
        ]
        usable[norm] = max(good, default=None)
    none, batch = usable["none"], usable["batch"]
    beyond = [lr for lr in sorted({c.setting for c in r.lr}) if none is not None and lr > none]
    effects = [_difference(r.lr, "batch", "none", lr, r.chance) for lr in beyond]
    shown = "; ".join(f"lr {lr:g}: {_pts(e)}" for lr, e in zip(beyond, effects))
    ratio = f"{batch / none:g}x" if none and batch else "n/a"
    verdict = stats.verdict_greater(effects)
    if verdict == stats.SUPPORTED and (not none or batch < 10 * none):
        verdict = stats.MIXED  # better at higher rates, but not an order of magnitude more
    return (
        f"highest usable peak rate: none {none}, batch {batch} ({ratio}); batch minus none "
        f"above none's: {shown or 'no rate above it'} ({len(r.preset.seeds)} seeds)",
        verdict,
    )


def speeds_up_training(r) -> tuple[str, str]:
    rows = {x.norm: x for x in r.cnn.rows}
    none, batch = rows.get("none"), rows.get("batch")
    if not (none and batch and none.steps_to_threshold and batch.steps_to_threshold):
        return "n/a", stats.NOT_TESTED
    effect = difference_ci(none.steps_list, batch.steps_list)
    ratio = none.steps_to_threshold.mean / batch.steps_to_threshold.mean
    return (
        f"steps to {100 * r.cnn.threshold:.1f}% validation accuracy, none minus batch: "
        f"{effect.format(1, 0)} ({ratio:.2f}x fewer steps; seeds reaching it: none "
        f"{none.reached}, batch {batch.reached})",
        stats.verdict_greater([effect]),
    )


def layer_norm_batch_independent(r) -> tuple[str, str]:
    effects, parts = [], []
    for name, cells in (("CNN", r.batch), ("LSTM", r.lstm_batch)):
        sizes = sorted({c.setting for c in cells if c.norm == "layer"})
        for b in sizes[:-1]:
            a, ref = cell(cells, "layer", b), cell(cells, "layer", sizes[-1])
            effects.append(difference_ci(a.test_accs, ref.test_accs))
            parts.append(f"{name} B={b:g} minus B={sizes[-1]:g}: {_pts(effects[-1])}")
    return "; ".join(parts) or "n/a", stats.verdict_equivalent(effects, EQUIVALENCE_MARGIN)


def layer_beats_batch_small(r) -> tuple[str, str]:
    effects, parts = [], []
    for name, cells in (("CNN", r.batch), ("LSTM", r.lstm_batch)):
        for b in sorted({c.setting for c in cells if c.setting <= 4}):
            effects.append(_difference(cells, "layer", "batch", b, r.chance))
            parts.append(f"{name} B={b:g}: {_pts(effects[-1])}")
    return "layer minus batch, " + "; ".join(parts), stats.verdict_greater(effects)


def layer_beats_batch_recurrent(r) -> tuple[str, str]:
    e = _norm_difference(r.lstm, "layer", "batch")
    return f"LSTM, layer minus batch: {_pts(e)}", stats.verdict_greater([e])


def batch_beats_layer_conv(r) -> tuple[str, str]:
    short = _norm_difference(r.cnn, "batch", "layer")
    converged = _norm_difference(r.converged, "batch", "layer")
    return (
        f"batch minus layer: short budget {_pts(short)}; converged {_pts(converged)}",
        stats.verdict_greater([short, converged]),
    )


def weight_norm_cheaper(r) -> tuple[str, str]:
    bn, wn = "default/batch/custom", "default/weight/custom"
    if bn not in r.cost_ms or wn not in r.cost_ms:
        return "n/a", stats.NOT_TESTED
    e = difference_ci(r.cost_rounds[bn], r.cost_rounds[wn])
    more = 100 * (r.cost_ms[bn].mean / r.cost_ms[wn].mean - 1)
    return (
        f"ms per training step, batch minus weight: {e.format(1, 2, ' ms')}; batch norm "
        f"{more:+.0f}% per step ({r.preset.cost_rounds} interleaved rounds)",
        stats.verdict_greater([e]),
    )


def group_norm_claim(r) -> tuple[str, str]:
    sizes = sorted({c.setting for c in r.batch if c.norm == "group"})
    if not sizes:
        return "n/a", stats.NOT_TESTED
    large = _difference(r.batch, "group", "batch", sizes[-1], r.chance)
    small = _difference(r.batch, "group", "batch", sizes[0], r.chance)
    matches = stats.verdict_equivalent([large], EQUIVALENCE_MARGIN)
    beats = stats.verdict_greater([small])
    if matches == beats:
        verdict = matches
    else:
        verdict = stats.NOT_TESTED if stats.NOT_TESTED in (matches, beats) else stats.MIXED
    return (
        f"group minus batch: B={sizes[-1]:g} {_pts(large)} (matches: {matches}); "
        f"B={sizes[0]:g} {_pts(small)} (beats: {beats})",
        verdict,
    )


def equal_to_tensorflow(r) -> tuple[str, str]:
    errors = [
        max(row["forward_rel"], *row["grad_rel"].values())
        for row in r.parity_table
        if row["dtype"] == "float32"
    ]
    if not errors:
        return "n/a", stats.NOT_TESTED
    layers = [row for result in r.parity_layers.values() for row in result["layers"]]
    closer = sum(row["custom_err64"] <= row["builtin_err64"] for row in layers)
    verdict = stats.SUPPORTED if max(errors) <= PARITY_TOLERANCE else stats.NOT_SUPPORTED
    return (
        f"largest float32 difference over every norm, built-in, shape, forward and gradient: "
        f"{max(errors):.1e} relative (tolerance {PARITY_TOLERANCE:.1e}); on trained weights, "
        f"normlab is as close or closer to float64 than the built-in at {closer} of "
        f"{len(layers)} layers",
        verdict,
    )


# (claim, source, where the evidence is, the function that tests it)
CLAIMS = (
    ("Batch norm lets a network train at much higher learning rates", "Ioffe & Szegedy 2015",
     "table lr, figure lr", higher_learning_rates),
    ("Batch norm speeds up training (fewer steps to the same accuracy)",
     "Ioffe & Szegedy 2015 (14x on Inception)", "table cnn, figure cnn", speeds_up_training),
    ("Layer norm does not depend on the batch size", "Ba, Kiros & Hinton 2016",
     "tables batch, lstm_batch", layer_norm_batch_independent),
    ("Layer norm beats batch norm at small batches (B <= 4)", "Ba et al. 2016; Wu & He 2018",
     "tables batch, lstm_batch", layer_beats_batch_small),
    ("Layer norm beats batch norm in recurrent networks",
     "Ba et al. 2016 (LN-LSTM) vs Cooijmans et al. 2016", "table lstm, figure lstm",
     layer_beats_batch_recurrent),
    ("Batch norm beats layer norm in ConvNets", "Ba et al. 2016, section 6.7",
     "tables cnn, converged", batch_beats_layer_conv),
    ("Weight norm costs less per step than batch norm (~16% in the paper)",
     "Salimans & Kingma 2016", "table cost", weight_norm_cheaper),
    ("Group norm matches batch norm at large batches and beats it at the smallest",
     "Wu & He 2018", "table batch", group_norm_claim),
    ("normlab's from-scratch functions equal TensorFlow's", "this project", "parity tables",
     equal_to_tensorflow),
)  # fmt: skip


def evaluate(results) -> list[Claim]:
    """Every claim of CLAIMS, numbered from 1, with its evidence and verdict."""
    out = []
    for number, (text, source, where, test) in enumerate(CLAIMS, 1):
        evidence, verdict = test(results)
        out.append(Claim(number, text, source, evidence, verdict, where))
    return out
