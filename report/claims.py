"""The findings as a table of claims: each from a paper, tested on the runs, with a verdict.

Each claim is a function of the results that returns its evidence (effect sizes with 95%
confidence intervals and seed counts), its verdict by the rule of report/stats.py, and where
the evidence is (table/figure). Accuracy differences are in percentage points; a run that
diverged counts as chance accuracy (it predicts nothing) in a difference, and says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from normlab.report import stats
from normlab.report.stats import Estimate, difference_ci
from normlab.report.tables import SweepCell, cell

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


def _accs(c: SweepCell | None, chance: float) -> list[float]:
    """A cell's accuracies, a diverged seed counted at chance."""
    return [] if c is None else c.test_accs + [chance] * c.diverged


def _difference(cells, a: str, b: str, value, chance: float) -> Estimate | None:
    ca, cb = cell(cells, a, value), cell(cells, b, value)
    if not ca or not cb:
        return None
    return difference_ci(_accs(ca, chance), _accs(cb, chance))


def _row(comparison, norm: str):
    return next((r for r in comparison.rows if r.norm == norm), None) if comparison else None


def _norm_difference(comparison, a: str, b: str) -> Estimate | None:
    ra, rb = _row(comparison, a), _row(comparison, b)
    return difference_ci(ra.test_accs, rb.test_accs) if ra and rb else None


def higher_learning_rates(r) -> Claim:
    usable = {}
    for norm in ("none", "batch"):
        cells = [c for c in r.lr if c.norm == norm and c.test_acc is not None]
        best = max((c.test_acc.mean for c in cells), default=None)
        usable[norm] = max(
            (c.setting for c in cells if c.diverged == 0 and c.test_acc.mean >= best - USABLE_MARGIN),
            default=None,
        )
    rates = sorted({c.setting for c in r.lr})
    beyond = [lr for lr in rates if usable["none"] is not None and lr > usable["none"]]
    effects = [_difference(r.lr, "batch", "none", lr, r.chance) for lr in beyond]
    ratio = (
        f"{usable['batch'] / usable['none']:g}x"
        if usable["none"] and usable["batch"]
        else "n/a"
    )
    shown = "; ".join(f"lr {lr:g}: {_pts(e)}" for lr, e in zip(beyond, effects))
    evidence = (
        f"highest usable peak rate: none {usable['none']}, batch {usable['batch']} ({ratio}); "
        f"batch minus none above none's: {shown or 'no rate above it'} ({r.seeds} seeds)"
    )
    verdict = stats.verdict_greater(effects)
    if verdict == stats.SUPPORTED and (not usable["none"] or usable["batch"] < 10 * usable["none"]):
        verdict = stats.MIXED  # better at higher rates, but not an order of magnitude more
    return Claim(1, "Batch norm lets a network train at much higher learning rates",
                 "Ioffe & Szegedy 2015", evidence, verdict, "table lr, figure lr")


def speeds_up_training(r) -> Claim:
    none, batch = _row(r.cnn, "none"), _row(r.cnn, "batch")
    effect = difference_ci(none.steps_list, batch.steps_list) if none and batch else None
    ratio = (
        f"{none.steps_to_threshold.mean / batch.steps_to_threshold.mean:.2f}x fewer steps"
        if none and batch and none.steps_to_threshold and batch.steps_to_threshold
        else "n/a"
    )
    level = f"{100 * r.cnn.threshold:.1f}%" if r.cnn.threshold else "n/a"
    evidence = (
        f"steps to {level} validation accuracy, none minus batch: "
        f"{effect.format(1, 0) if effect else 'n/a'} ({ratio}; seeds reaching it: none "
        f"{none.reached if none else 0}, batch {batch.reached if batch else 0})"
    )
    return Claim(2, "Batch norm speeds up training (fewer steps to the same accuracy)",
                 "Ioffe & Szegedy 2015 (14x on Inception)", evidence,
                 stats.verdict_greater([effect]), "table cnn, figure cnn")


def layer_norm_batch_independent(r) -> Claim:
    effects, parts = [], []
    for name, cells in (("CNN", r.batch), ("LSTM", r.lstm_batch)):
        sizes = sorted({c.setting for c in cells if c.norm == "layer"})
        if len(sizes) < 2:
            continue
        largest = sizes[-1]
        for b in sizes[:-1]:
            a, ref = cell(cells, "layer", b), cell(cells, "layer", largest)
            e = difference_ci(a.test_accs, ref.test_accs) if a and ref else None
            effects.append(e)
            parts.append(f"{name} B={b:g} minus B={largest:g}: {_pts(e)}")
    verdict = stats.verdict_equivalent(effects, EQUIVALENCE_MARGIN)
    return Claim(3, "Layer norm does not depend on the batch size",
                 "Ba, Kiros & Hinton 2016", "; ".join(parts) or "n/a", verdict,
                 "tables batch, lstm_batch")


def layer_beats_batch_small(r) -> Claim:
    effects, parts = [], []
    for name, cells in (("CNN", r.batch), ("LSTM", r.lstm_batch)):
        for b in sorted({c.setting for c in cells if c.setting <= 4}):
            e = _difference(cells, "layer", "batch", b, r.chance)
            effects.append(e)
            parts.append(f"{name} B={b:g}: {_pts(e)}")
    return Claim(4, "Layer norm beats batch norm at small batches (B <= 4)",
                 "Ba et al. 2016; Wu & He 2018", "layer minus batch, " + "; ".join(parts),
                 stats.verdict_greater(effects), "tables batch, lstm_batch")


def layer_beats_batch_recurrent(r) -> Claim:
    e = _norm_difference(r.lstm, "layer", "batch")
    return Claim(5, "Layer norm beats batch norm in recurrent networks",
                 "Ba et al. 2016 (LN-LSTM) vs Cooijmans et al. 2016", f"LSTM, layer minus batch: "
                 f"{_pts(e)}", stats.verdict_greater([e]), "table lstm, figure lstm")


def batch_beats_layer_conv(r) -> Claim:
    effects = [_norm_difference(r.cnn, "batch", "layer"), _norm_difference(r.converged, "batch", "layer")]
    evidence = f"batch minus layer: short budget {_pts(effects[0])}; converged {_pts(effects[1])}"
    return Claim(6, "Batch norm beats layer norm in ConvNets", "Ba et al. 2016, section 6.7",
                 evidence, stats.verdict_greater(effects), "tables cnn, converged")


def weight_norm_cheaper(r) -> Claim:
    bn, wn = r.cost_ms.get("default/batch/custom"), r.cost_ms.get("default/weight/custom")
    e = difference_ci(r.cost_rounds["default/batch/custom"], r.cost_rounds["default/weight/custom"]) if bn and wn else None
    evidence = (
        f"ms per training step, batch minus weight: {e.format(1, 2, ' ms') if e else 'n/a'}; batch "
        f"norm {100 * (bn.mean / wn.mean - 1):+.0f}% per step ({r.cost_rounds_n} interleaved rounds)"
        if e else "n/a"
    )
    return Claim(7, "Weight norm costs less per step than batch norm (~16% in the paper)",
                 "Salimans & Kingma 2016", evidence, stats.verdict_greater([e]), "table cost")


def group_norm_claim(r) -> Claim:
    sizes = sorted({c.setting for c in r.batch if c.norm == "group"})
    if not sizes:
        return Claim(8, "Group norm matches batch norm at large batches and beats it at batch 2",
                     "Wu & He 2018", "n/a", stats.NOT_TESTED, "table batch")
    large = _difference(r.batch, "group", "batch", sizes[-1], r.chance)
    small = _difference(r.batch, "group", "batch", sizes[0], r.chance)
    matches = stats.verdict_equivalent([large], EQUIVALENCE_MARGIN)
    beats = stats.verdict_greater([small])
    verdicts = {matches, beats}
    verdict = (matches if len(verdicts) == 1 else stats.NOT_TESTED if stats.NOT_TESTED in verdicts
               else stats.MIXED)
    evidence = (f"group minus batch: B={sizes[-1]:g} {_pts(large)} (matches: {matches}); "
                f"B={sizes[0]:g} {_pts(small)} (beats: {beats})")
    return Claim(8, f"Group norm matches batch norm at large batches and beats it at batch "
                 f"{sizes[0]:g}", "Wu & He 2018", evidence, verdict, "table batch")


def equal_to_tensorflow(r) -> Claim:
    worst = max((max(row["forward_rel"], *row["grad_rel"].values())
                 for row in r.parity_table if row["dtype"] == "float32"), default=None)
    layers = [row for result in r.parity_layers.values() for row in result["layers"]]
    closer = sum(row["custom_err64"] <= row["builtin_err64"] for row in layers)
    evidence = (
        f"largest float32 difference over every norm, built-in, shape, forward and gradient: "
        f"{worst:.1e} relative (tolerance {PARITY_TOLERANCE:.1e}); on trained weights, normlab "
        f"is as close or closer to float64 than the built-in at {closer} of {len(layers)} layers"
        if worst is not None else "n/a"
    )
    verdict = stats.NOT_TESTED if worst is None else (
        stats.SUPPORTED if worst <= PARITY_TOLERANCE else stats.NOT_SUPPORTED)
    return Claim(9, "normlab's from-scratch functions equal TensorFlow's", "this project",
                 evidence, verdict, "parity tables")


CLAIMS: tuple[Callable, ...] = (
    higher_learning_rates,
    speeds_up_training,
    layer_norm_batch_independent,
    layer_beats_batch_small,
    layer_beats_batch_recurrent,
    batch_beats_layer_conv,
    weight_norm_cheaper,
    group_norm_claim,
    equal_to_tensorflow,
)


def evaluate(results) -> list[Claim]:
    return [claim(results) for claim in CLAIMS]
