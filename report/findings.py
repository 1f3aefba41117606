"""The findings: text computed from the tables, never written in advance.

Every sentence that states a result is built from the numbers it quotes and worded by
comparisons on them (which is larger, whether a difference exceeds its noise), so the same
code writes a truthful report whatever the runs measured. The published numbers quoted are
the anchors of /work/shared/REFERENCE.md.
"""

from __future__ import annotations

import math
import statistics

from normlab.report.results import BatchRow, NormRow, Tables

# The exercise's typical results (test accuracy) after 5 and 2 epochs, and published small
# CNNs on Fashion-MNIST (REFERENCE.md, "Accuracy anchors on Fashion-MNIST").
EXERCISE_ANCHORS = {
    5: {"none": 0.914, "batch": 0.914, "layer": 0.911, "weight": 0.852},
    2: {"none": 0.873, "batch": 0.894, "layer": 0.895, "weight": 0.882},
}
PUBLISHED_ANCHORS = (
    ("2 conv + pooling", 0.916),
    ("2 conv + pooling + BN", 0.934),
    ("2 conv + 3 FC", 0.932),
    ("5 conv + BN", 0.931),
)
# Custom and built-in compute "the same function" when every forward and gradient difference
# on the same inputs is below this, relative to the built-in's largest value (float32 rounding
# of these sums is ~1e-6; 1e-4 leaves room for the reduction-order differences).
PARITY_TOL = 1e-4
# Section 4: a rate is "usable" if the run neither diverged nor fell more than this below the
# best run of the sweep.
USABLE_MARGIN = 0.05
# A twin "starts at rounding level" when one step leaves it this close to custom.
ROUNDING_START = 1e-5
# A difference "is rounding" when no larger than this many times its one-ulp control's.
ROUNDING_FACTOR = 10.0
# A difference of two means is "clear" when it exceeds this many standard errors.
CLEAR_SE = 2.0
NAMES = {
    "none": "no normalization",
    "batch": "batch norm",
    "layer": "layer norm",
    "weight": "weight norm",
    "group": "group norm",
}


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def points(x: float) -> str:
    return f"{100 * abs(x):.2f} points"


def acc_text(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{pct(values[0])} (1 seed)"
    return (
        f"{pct(statistics.fmean(values))} ± {100 * statistics.stdev(values):.2f} "
        f"({len(values)} seeds)"
    )


def compare(a: list[float], b: list[float]) -> tuple[float, float | None, str]:
    """(mean(a) - mean(b), its standard error, verdict) with verdict one of "higher",
    "lower", "tie" (within CLEAR_SE standard errors) or "unknown" (a single seed)."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None, "unknown"
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if abs(diff) > CLEAR_SE * se:
        return diff, se, "higher" if diff > 0 else "lower"
    return diff, se, "tie"


def _noise_sentence(diff: float, se: float | None, verdict: str) -> str:
    if verdict == "unknown":
        return (
            "with one seed there is no estimate of the seed-to-seed noise, so this order "
            "is not established"
        )
    if verdict == "tie":
        return (
            f"that is within {CLEAR_SE:g} standard errors ({points(se)}): a tie at this "
            "number of seeds"
        )
    return f"more than {CLEAR_SE:g} standard errors ({points(se)})"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _row(t: Tables, norm: str) -> NormRow | None:
    return next((r for r in t.norms if r.norm == norm and r.test_acc), None)


# -- 1: which norm is best ------------------------------------------------------------------


def best_norm(t: Tables) -> str:
    rows = sorted((r for r in t.norms if r.test_acc), key=lambda r: -statistics.fmean(r.test_acc))
    if len(rows) < 2:
        return "**Best normalization:** not enough complete runs in section 1 to compare."
    best, second = rows[0], rows[1]
    diff, se, verdict = compare(best.test_acc, second.test_acc)
    ranking = " > ".join(f"{r.norm} {pct(statistics.fmean(r.test_acc))}" for r in rows)
    if verdict in ("higher",):
        lead = f"**{NAMES[best.norm].capitalize()} is the best normalization on this task**"
    else:
        lead = (
            f"**{NAMES[best.norm].capitalize()} has the highest mean test accuracy, but not "
            f"clearly ahead of {NAMES[second.norm]}**"
        )
    text = (
        f"{lead}: {acc_text(best.test_acc)} vs {acc_text(second.test_acc)} for "
        f"{NAMES[second.norm]} (table 1), {points(diff)} ahead; "
        f"{_noise_sentence(diff, se, verdict)}. Ranking by mean test accuracy: {ranking}."
    )
    if best.norm == "none":
        text += (
            " No normalization comes first: at this length and learning rate the normalized "
            "networks did not pay off in final accuracy on this task."
        )
    return text


# -- why --------------------------------------------------------------------------------------


def why(t: Tables) -> str:
    parts = []
    base = next((r for r in t.norms if r.norm == "none"), None)
    if t.threshold is not None and t.norms:
        speeds = {}
        for r in t.norms:
            reached = [s for s in r.steps_to_threshold if s is not None]
            if reached:
                speeds[r.norm] = (statistics.fmean(reached), len(reached), len(r.test_acc))
        if speeds:
            listing = ", ".join(
                f"{n} {s:.0f} steps" + (f" ({k} of {m} seeds)" if k < m else "")
                for n, (s, k, m) in sorted(speeds.items(), key=lambda kv: kv[1][0])
            )
            least = min(s for s, _, _ in speeds.values())
            fastest = [n for n, (s, _, _) in speeds.items() if s == least]
            parts.append(
                f"Steps to {pct(t.threshold)} validation accuracy (table 1, mean over the seeds "
                f"that reached it): {listing}"
            )
            if "none" in fastest and len(fastest) == 1:
                parts[-1] += "; no normalization got there first: normalization did not speed up"
                parts[-1] += " training here"
            elif "none" in fastest:
                parts[-1] += "; no normalized network got there in fewer steps than without one"
            elif "none" in speeds:
                parts[-1] += (
                    f"; {' and '.join(NAMES[n] for n in fastest)} got there first, "
                    f"{speeds['none'][0] / least:.1f}x fewer steps than without normalization"
                )
            else:
                parts[-1] += (
                    f"; {' and '.join(NAMES[n] for n in fastest)} got there first; without "
                    "normalization no seed reached it"
                )
    inside = {(r.norm, r.layer): r for r in t.inside}
    hidden = [r.layer for r in t.inside if r.norm == "none" and r.layer != "global"]
    if base is not None and hidden:
        drift = {
            layer: inside[("none", layer)].pre_std[1] / inside[("none", layer)].pre_std[0]
            for layer in hidden
            if inside[("none", layer)].pre_std[0] > 0
        }
        if drift:
            worst = max(drift, key=lambda k: abs(math.log(drift[k])) if drift[k] > 0 else 0)
            r = inside[("none", worst)]
            sentence = (
                f"without normalization the std of {worst}'s output went from "
                f"{r.pre_std[0]:.3g} to {r.pre_std[1]:.3g} over training (table 5)"
            )
            normed = [
                (n, inside[(n, worst)].post_std[1])
                for n in ("batch", "layer", "group")
                if (n, worst) in inside
            ]
            if normed:
                sentence += "; after the norm layer it ended at " + ", ".join(
                    f"{v:.3g} ({n})" for n, v in normed
                )
            parts.append(sentence[0].upper() + sentence[1:])
    grads = [(r.norm, r.grad_norm) for r in t.inside if r.layer == "global"]
    if grads:
        parts.append(
            "Global gradient norm, first -> last summary: "
            + ", ".join(f"{n} {a:.3g} -> {b:.3g}" for n, (a, b) in grads)
        )
    summary = _why_summary(t)
    if summary:
        parts.append(summary)
    if not parts:
        return ""
    return "**Why (what the runs show):** " + ". ".join(parts) + "."


def _why_summary(t: Tables) -> str:
    """One sentence weighing the three effects the sections measure, each by its numbers."""
    none = _row(t, "none")
    normed = [r for r in t.norms if r.norm != "none" and r.test_acc]
    if none is None or not normed:
        return ""
    best = max(normed, key=lambda r: statistics.fmean(r.test_acc))
    diff, _, verdict = compare(best.test_acc, none.test_acc)
    clauses = []
    if verdict == "higher" or (verdict == "unknown" and diff > 0):
        clauses.append(f"the best norm ({best.norm}) gained {points(diff)} of test accuracy")
    else:
        clauses.append(
            f"the best norm ({best.norm}) did not clearly gain test accuracy ({100 * diff:+.2f} "
            "points)"
        )
    steps = {
        r.norm: statistics.fmean([s for s in r.steps_to_threshold if s is not None])
        for r in t.norms
        if any(s is not None for s in r.steps_to_threshold)
    }
    if "none" in steps and len(steps) > 1:
        fastest = min((n for n in steps if n != "none"), key=steps.get)
        ratio = steps["none"] / steps[fastest]
        clauses.append(
            f"{fastest} reached the threshold {ratio:.1f}x sooner"
            if ratio > 1
            else "no norm reached the threshold sooner"
        )
    usable = _usable_rates(t)[0]
    if usable.get("batch") is not None and usable.get("none") is not None:
        ratio = usable["batch"] / usable["none"]
        clauses.append(
            f"batch norm kept training well at a {ratio:g}x higher learning rate"
            if ratio > 1
            else "batch norm did not allow a higher usable learning rate"
        )
    return "In short: " + "; ".join(clauses)


# -- layer norm vs batch norm -------------------------------------------------------------


def layer_vs_batch(t: Tables) -> str:
    parts = []
    bn, ln = _row(t, "batch"), _row(t, "layer")
    if bn and ln:
        diff, se, verdict = compare(bn.test_acc, ln.test_acc)
        if verdict == "higher":
            claim = "agrees with the layer-norm paper's section 6.7 (batch norm ahead in ConvNets)"
        elif verdict == "lower":
            claim = (
                "contradicts the layer-norm paper's section 6.7, which has batch norm ahead "
                "in ConvNets"
            )
        else:
            claim = (
                "does not settle the layer-norm paper's section 6.7 claim (batch norm ahead "
                "in ConvNets) either way"
            )
        ahead = "batch norm" if diff >= 0 else "layer norm"
        parts.append(
            f"At batch {t.reference_batch} (table 1) batch norm reaches {acc_text(bn.test_acc)} "
            f"and layer norm {acc_text(ln.test_acc)}: {ahead} by {points(diff)}, "
            f"{_noise_sentence(diff, se, verdict)}. This {claim}"
        )
    sweep = _batch_sweep(t)
    if sweep:
        parts.append(sweep)
    gap = _bn_gap(t)
    if gap:
        parts.append(gap)
    leads = _where_batch_leads(t)
    if leads:
        parts.append(leads)
    if not parts:
        return ""
    return "**When layer norm beats batch norm, and when not:** " + ". ".join(parts) + "."


def _where_batch_leads(t: Tables) -> str:
    """Every measurement in which batch norm is ahead of layer norm, with its numbers."""
    items = []
    bn, ln = _row(t, "batch"), _row(t, "layer")
    if bn and ln and statistics.fmean(bn.test_acc) > statistics.fmean(ln.test_acc):
        diff = statistics.fmean(bn.test_acc) - statistics.fmean(ln.test_acc)
        items.append(f"test accuracy at batch {t.reference_batch} (+{100 * diff:.2f}, table 1)")
    rows = {(r.norm, r.batch_size): r for r in t.batch}
    ahead = [
        b
        for (n, b), r in sorted(rows.items())
        if n == "batch"
        and ("layer", b) in rows
        and (_acc_or_diverged(r) or 0) > (_acc_or_diverged(rows[("layer", b)]) or 0)
    ]
    if ahead:
        items.append(f"batch sizes {_sizes(ahead)} (table 3)")
    usable = _usable_rates(t)[0]
    b, n = usable.get("batch"), usable.get("layer")
    if b is not None and (n is None or b > n):
        items.append(f"the highest usable learning rate ({_lr(b)} vs {_lr(n)}, table 4)")
    rates = {(r.norm, r.impl): r.rate for r in t.cost if r.rate}
    fast_b, fast_l = rates.get(("batch", "custom")), rates.get(("layer", "custom"))
    if fast_b and fast_l and fast_b > fast_l:
        items.append(f"speed ({fast_b / fast_l:.2f}x layer norm's images/s, table 6)")
    if not items:
        return "Batch norm leads layer norm in none of these measurements"
    return "Batch norm stays ahead of layer norm in: " + "; ".join(items)


def _tie_margin(t: Tables) -> tuple[float | None, str]:
    """Section 3 has one seed: differences below twice section 1's seed std count as ties."""
    bn = _row(t, "batch")
    if bn and len(bn.test_acc) > 1:
        return 2 * statistics.stdev(bn.test_acc), "twice batch norm's seed-to-seed std in table 1"
    return None, ""


def _acc_or_diverged(row: BatchRow | None) -> float | None:
    if row is None:
        return None
    return 0.0 if row.status == "diverged" else row.test_acc


def _batch_sweep(t: Tables) -> str:
    rows = {(r.norm, r.batch_size): r for r in t.batch}
    sizes = sorted({b for _, b in rows})
    if not sizes or not any(n == "batch" for n, _ in rows):
        return ""
    margin, margin_source = _tie_margin(t)
    sentences = []
    for other in ("layer", "group"):
        if not any(n == other for n, _ in rows):
            continue
        wins, losses, ties = [], [], []
        for b in sizes:
            a, o = _acc_or_diverged(rows.get(("batch", b))), _acc_or_diverged(rows.get((other, b)))
            if a is None or o is None:
                continue
            d = o - a
            if margin is not None and abs(d) <= margin:
                ties.append(b)
            elif d > 0:
                wins.append(b)
            else:
                losses.append(b)
        if not (wins or losses or ties):
            continue
        s = (
            f"{NAMES[other]} beats batch norm at batch size {_sizes(wins)}"
            if wins
            else (f"{NAMES[other]} beats batch norm at no batch size")
        )
        s += f"; batch norm is ahead at {_sizes(losses)}" if losses else ""
        s += f"; ties at {_sizes(ties)}" if ties else ""
        if wins and losses and max(wins) < min(losses):
            s += f" (a crossover between B={max(wins)} and B={min(losses)})"
        sentences.append(s)
    bn_small = rows.get(("batch", sizes[0]))
    detail = []
    for n in ("batch", "layer", "group"):
        small, large = rows.get((n, sizes[0])), rows.get((n, sizes[-1]))
        if small is not None and large is not None:
            detail.append(f"{n} {_result(large)} -> {_result(small)}")
    text = "Batch-size sweep (table 3, one seed, the same examples at every size): " + "; ".join(
        sentences
    )
    if margin is not None:
        text += f" (differences within {points(margin)}, {margin_source}, count as ties)"
    if detail:
        text += f". From B={sizes[-1]} down to B={sizes[0]}: " + ", ".join(detail)
    if bn_small and bn_small.status == "diverged":
        text += f"; batch norm diverged at B={sizes[0]}"
    return text


def _result(row: BatchRow) -> str:
    return "diverged" if row.status == "diverged" else pct(row.test_acc)


def _sizes(sizes: list[int]) -> str:
    return ", ".join(str(b) for b in sizes)


def _bn_gap(t: Tables) -> str:
    rows = sorted(
        (r for r in t.batch if r.norm == "batch" and r.batch_stats_acc is not None),
        key=lambda r: r.batch_size,
    )
    if not rows:
        return ""
    gaps = [(r.batch_size, r.inference_acc - r.batch_stats_acc) for r in rows]
    listing = ", ".join(f"B={b}: {100 * g:+.2f}" for b, g in gaps)
    small, large = gaps[0], gaps[-1]
    text = (
        "Batch norm's train/test discrepancy (table 3: test accuracy with moving statistics "
        f"minus with the statistics of a test batch of the training batch size, in points): "
        f"{listing}"
    )
    if small[1] > 0 and small[1] > abs(large[1]):
        text += (
            f"; the moving statistics beat a test batch's own statistics by {points(small[1])} "
            f"at B={small[0]} against {100 * large[1]:+.2f} at B={large[0]}: a small batch's "
            "statistics are a noisy estimate, which layer and group norm avoid by normalizing "
            "each example by itself (the same computation in training and inference, so their "
            "gap is 0 by construction)"
        )
    else:
        text += (
            f"; the discrepancy does not grow as the batch shrinks ({100 * small[1]:+.2f} at "
            f"B={small[0]} vs {100 * large[1]:+.2f} at B={large[0]})"
        )
    return text


# -- learning rate --------------------------------------------------------------------------


def learning_rates(t: Tables) -> str:
    if not t.lr:
        return ""
    finished = [r.test_acc for r in t.lr if r.status == "complete" and r.test_acc is not None]
    if not finished:
        return "**Learning rate:** every run of the sweep diverged."
    usable, stable, diverged, best = _usable_rates(t)
    listing = ", ".join(f"{n}: {_lr(v)}" for n, v in usable.items())
    text = (
        f"**Learning rate (table 4):** highest peak rate whose run neither diverged nor ended "
        f"more than {points(USABLE_MARGIN)} below the sweep's best ({pct(best)}): {listing}; "
        "highest rate that did not diverge: "
        + ", ".join(f"{n}: {_lr(v)}" for n, v in stable.items())
        + "."
    )
    div = [f"{n} at {', '.join(_lr(x) for x in v)}" for n, v in diverged.items() if v]
    text += (
        (" Diverged (non-finite loss): " + "; ".join(div) + ".") if div else (" No run diverged.")
    )
    if "batch" in usable and "none" in usable:
        text += " " + _lr_claim(usable["batch"], usable["none"])
    return text


def _usable_rates(t: Tables) -> tuple[dict, dict, dict, float | None]:
    """Per norm of table 4: the highest usable rate (not diverged, test accuracy within
    USABLE_MARGIN of the sweep's best), the highest that did not diverge, the rates that
    diverged; and the sweep's best accuracy."""
    finished = [r.test_acc for r in t.lr if r.status == "complete" and r.test_acc is not None]
    best = max(finished, default=None)
    usable, stable, diverged = {}, {}, {}
    for norm in dict.fromkeys(r.norm for r in t.lr):
        rows = sorted((r for r in t.lr if r.norm == norm), key=lambda r: r.lr)
        ok = [r for r in rows if r.status == "complete"]
        stable[norm] = max((r.lr for r in ok), default=None)
        usable[norm] = max(
            (
                r.lr
                for r in ok
                if best is not None
                and r.test_acc is not None
                and r.test_acc >= best - USABLE_MARGIN
            ),
            default=None,
        )
        diverged[norm] = [r.lr for r in rows if r.status == "diverged"]
    return usable, stable, diverged, best


def _lr_claim(b: float | None, n: float | None) -> str:
    """The verdict on "batch norm allows much higher learning rates" from the usable rates."""
    claim = "the claim that batch norm allows much higher learning rates"
    if b is None and n is None:
        return f"Neither trained well at any rate of the sweep: {claim} is not tested."
    if b is None:
        return f"This contradicts {claim}: batch norm trained well at no rate of the sweep."
    if n is None:
        return (
            f"This supports {claim}: batch norm trained well up to {b:g}, the network without "
            "it at no rate of the sweep."
        )
    if b > n:
        strength = "strongly supports" if b / n >= 10 else "supports"
        return (
            f"This {strength} {claim}: batch norm trained well at a {b / n:g}x higher rate "
            f"({b:g} vs {n:g})."
        )
    if b == n:
        return f"This does not support {claim}: both trained well up to the same rate, {b:g}."
    return (
        f"This contradicts {claim}: batch norm's highest usable rate ({b:g}) is below that "
        f"without normalization ({n:g})."
    )


def _lr(x: float | None) -> str:
    return "no rate" if x is None else f"{x:g}"


# -- custom vs built-in ---------------------------------------------------------------------


def _parity_verdicts(t: Tables) -> dict[str, str]:
    """Per norm: "same" (no difference beyond rounding), else who it comes from: "builtin" /
    "custom" (that side is 10x further from the float64 reference at the norm layer that
    differs most), "both" (equally far), "model" (no norm layer explains it).

    A difference is beyond rounding when a norm layer's forward or gradient difference is at
    least PARITY_TOL, or a whole-model gradient difference is both at least PARITY_TOL and more
    than ROUNDING_FACTOR x what moving every weight by one ulp does to it (the control)."""
    out = {}
    for result in t.parity:
        rows, model = result["layers"], result["model"]
        layer_diff = any(
            r["forward_rel"] >= PARITY_TOL or max(r["grad_rel"].values()) >= PARITY_TOL
            for r in rows
        )
        model_diff = model["grad_rel_max"] >= PARITY_TOL and model["grad_rel_max"] > (
            ROUNDING_FACTOR * model.get("control_grad_rel_worst", 0.0)
        )
        if not (layer_diff or model_diff):
            out[result["norm"]] = "same"
            continue
        worst = _source_layer(result)
        if worst is None:
            out[result["norm"]] = "model"
        elif worst["builtin_err64"] > 10 * worst["custom_err64"]:
            out[result["norm"]] = "builtin"
        elif worst["custom_err64"] > 10 * worst["builtin_err64"]:
            out[result["norm"]] = "custom"
        else:
            out[result["norm"]] = "both" if layer_diff else "model"
    return out


def _source_layer(result: dict) -> dict | None:
    """The norm layer whose custom and built-in outputs differ most (absolute)."""
    return max(result["layers"], key=lambda r: r["forward_abs"], default=None)


def custom_vs_builtin(t: Tables) -> str:
    parts = []
    verdicts = _parity_verdicts(t)
    same = [r for r in t.parity if verdicts[r["norm"]] == "same"]
    if same:
        text = (
            f"On the same weights and the same batch (table 2a) {', '.join(r['norm'] for r in same)}"
            f": every norm layer's forward and gradient differences are below {PARITY_TOL:g} of "
            "the built-in's scale: the same function up to float32 rounding"
        )
        loud = [r for r in same if r["model"]["grad_rel_max"] >= PARITY_TOL]
        if loud:
            text += (
                "; the larger whole-model gradient differences ("
                + ", ".join(
                    f"{r['norm']} {r['model']['grad_rel_max']:.1e} at {r['model']['grad_rel_worst']}"
                    for r in loud
                )
                + ") are no more than "
                + f"{ROUNDING_FACTOR:g}x what moving every weight by one "
                "ulp does to the same gradient ("
                + ", ".join(f"{r['model']['control_grad_rel_worst']:.1e}" for r in loud)
                + "): gradients that are small sums of cancelling terms, rounding-sensitive in any "
                "implementation"
            )
        parts.append(text)
    for result in t.parity:
        verdict = verdicts[result["norm"]]
        if verdict == "same":
            continue
        model = result["model"]
        if verdict == "model":
            parts.append(
                f"{result['norm']}: the norm layers agree (table 2a) but the whole model's "
                f"gradient differs by {model['grad_rel_max']:.1e} at {model['grad_rel_worst']}, "
                f"more than {ROUNDING_FACTOR:g}x its one-ulp control "
                f"({model['control_grad_rel_worst']:.1e}): worth investigating"
            )
            continue
        worst = _source_layer(result)
        sentence = (
            f"{result['norm']} differs beyond rounding (table 2a): {worst['forward_rel']:.1e} "
            f"forward at {worst['layer']}, {model['grad_rel_max']:.1e} in the whole model's "
            f"gradient ({model['grad_rel_worst']}; its one-ulp control "
            f"{model.get('control_grad_rel_worst', float('nan')):.1e}). Against a float64 "
            f"reference on {worst['layer']}'s input the built-in ({worst['builtin']}) is off by "
            f"{worst['builtin_err64']:.1e} and custom by {worst['custom_err64']:.1e}"
        )
        if verdict == "builtin":
            reduced = f" over {worst['reduced']} values per channel" if worst.get("reduced") else ""
            sentence += (
                ": the difference is the built-in's float32 rounding of its statistics"
                f"{reduced}, not an error of the custom code"
            )
        elif verdict == "custom":
            sentence += ": the custom code is the less accurate one, worth investigating"
        else:
            sentence += ": both are equally far from float64"
        parts.append(sentence)
    trained = [r for r in t.impl if r.custom_acc is not None and r.builtin_acc is not None]
    if trained:
        listing = ", ".join(
            f"{r.norm} {100 * (r.builtin_acc - r.custom_acc):+.2f}" for r in trained
        )
        s = f"Trained side by side (table 2b), built-in minus custom test accuracy in points: {listing}"
        stds = [r for r in trained if r.seed_std is not None]
        if stds:
            beyond = [
                r.norm for r in stds if abs(r.builtin_acc - r.custom_acc) > CLEAR_SE * r.seed_std
            ]
            s += (
                f"; beyond {CLEAR_SE:g}x section 1's seed-to-seed std for {', '.join(beyond)}"
                if beyond
                else f"; all within {CLEAR_SE:g}x section 1's seed-to-seed std"
            )
        split = [f"{r.norm} at step {r.loss_split_step}" for r in trained if r.loss_split_step]
        s += (
            "; their training losses first differ by more than 1% " + ", ".join(split)
            if split
            else "; their training losses never differ by more than 1% at the summary steps"
        )
        parts.append(s)
    twins = [r for r in t.impl if r.twin_final]
    if twins:
        parts.append(_twins_text(twins, verdicts))
    if not parts:
        return ""
    return "**Custom vs built-in:** " + ". ".join(parts) + "."


def _twins_text(rows, verdicts: dict[str, str]) -> str:
    items, why = [], []
    for r in rows:
        b1, p1 = r.twin_start.get("builtin"), r.twin_start.get("perturbed")
        bf, pf = r.twin_final["builtin"], r.twin_final["perturbed"]
        items.append(
            f"{r.norm}: {_e(b1)} after step 1 -> {_e(bf)} after {r.twin_steps} (one-ulp "
            f"control: {_e(p1)} -> {_e(pf)})"
        )
        if b1 is None or p1 is None or not p1 > 0:
            continue
        grows = pf >= 10 * p1
        if b1 <= ROUNDING_START:
            origin = "a rounding-sized start"
        elif verdicts.get(r.norm) == "builtin":
            origin = (
                f"a start {b1 / p1:.0f}x further than the control's, from the built-in's less "
                "accurate statistics (table 2a)"
            )
        else:
            origin = f"a start {b1 / p1:.0f}x further than the control's, not explained by table 2a"
        if grows and bf <= 10 * max(pf, b1):
            why.append(
                f"{r.norm}: {origin}, amplified by training as much as the control's one-ulp "
                f"difference ({pf / p1:.0f}x over {r.twin_steps} steps)"
            )
        elif grows:
            why.append(f"{r.norm}: {origin}, growing faster than the control: beyond rounding")
        else:
            why.append(f"{r.norm}: {origin}; training did not amplify differences here")
    text = (
        "Twin trainings in lock step from identical weights (table 2b, figure 2b; relative "
        "parameter distance to custom): " + "; ".join(items)
    )
    if why:
        text += ". Where the twins part: " + "; ".join(why)
    return text


def _e(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


# -- cost ---------------------------------------------------------------------------------


def cost(t: Tables) -> str:
    rates = {(r.norm, r.impl): r.rate for r in t.cost if r.rate}
    base = rates.get(("none", "custom"))
    if not base:
        return ""
    how = "interleaved benchmark" if any(r.bench for r in t.cost) else "fastest logging window"
    listing = ", ".join(
        f"{n} ({i}) {v / base:.2f}x" for (n, i), v in rates.items() if (n, i) != ("none", "custom")
    )
    text = (
        f"**Cost (table 6, shared machine, {how}):** training images per second "
        f"relative to no normalization ({base:.0f} img/s): {listing}."
    )
    bn, wn = rates.get(("batch", "custom")), rates.get(("weight", "custom"))
    if bn and wn:
        slower = 1 - bn / wn
        text += (
            f" Batch norm is {abs(slower) * 100:.0f}% {'slower' if slower > 0 else 'faster'} "
            "per image than weight norm here (the weight-norm paper reports about 16% slower)."
        )
    pairs = [
        f"{norm} {rates[(norm, 'builtin')] / rates[(norm, 'custom')]:.2f}"
        for norm in ("batch", "layer", "weight", "group")
        if rates.get((norm, "custom")) and rates.get((norm, "builtin"))
    ]
    if pairs:
        text += " Built-in speed / custom speed: " + ", ".join(pairs) + "."
    return text


# -- anchors -----------------------------------------------------------------------------


def anchors(t: Tables) -> str:
    rows = {r.norm: statistics.fmean(r.test_acc) for r in t.norms if r.test_acc}
    if not rows:
        return ""
    epochs = t.norm_epochs or 0
    anchor_epochs = min(EXERCISE_ANCHORS, key=lambda e: abs(e - epochs))
    anchor = EXERCISE_ANCHORS[anchor_epochs]
    pairs = [
        f"{n} {pct(rows[n])} vs {pct(a)} ({100 * (rows[n] - a):+.2f})"
        for n, a in anchor.items()
        if n in rows
    ]
    text = (
        f"**Against published numbers:** after {epochs:g} epochs, ours vs the exercise's "
        f"typical {anchor_epochs}-epoch results: " + ", ".join(pairs) + "."
    )
    best_norm, best = max(rows.items(), key=lambda kv: kv[1])
    above = [f"{name} ({pct(a)})" for name, a in PUBLISHED_ANCHORS if best >= a]
    below = [f"{name} ({pct(a)})" for name, a in PUBLISHED_ANCHORS if best < a]
    text += f" Our best mean ({best_norm}, {pct(best)}) is "
    text += ("at or above " + ", ".join(above)) if above else ""
    text += (" and " if above and below else "") + (("below " + ", ".join(below)) if below else "")
    text += " (published small CNNs on Fashion-MNIST"
    if epochs < anchor_epochs:
        text += "; ours trained fewer epochs than the anchors"
    return text + ")."


# -- caveats -------------------------------------------------------------------------------


def caveats(t: Tables) -> list[str]:
    out = []
    if t.seeds < 2:
        out.append(
            "One seed per setting: no spread is measured, so differences of a few tenths of a "
            "point may be noise. The full preset runs 3 seeds."
        )
    if t.stale_bn:
        shares = [share for _, share in t.stale_bn]
        out.append(
            f"{len(t.stale_bn)} batch-norm run(s) are too short for their moving averages: "
            f"these still carry {100 * min(shares):.0f}-{100 * max(shares):.0f}% of their "
            "initial values (momentum ** steps), so their inference-mode accuracy understates "
            "the model: " + ", ".join(f"`{name}`" for name, _ in t.stale_bn) + "."
        )
    for r in t.norms:
        if r.diverged:
            out.append(f"{r.norm}: {r.diverged} of {r.seeds} seeds diverged in section 1.")
    return out


def findings(t: Tables) -> list[str]:
    """The findings, one paragraph each, in the order the report prints them."""
    paragraphs = [
        best_norm(t),
        why(t),
        layer_vs_batch(t),
        learning_rates(t),
        custom_vs_builtin(t),
        cost(t),
        anchors(t),
    ]
    out = [p for p in paragraphs if p]
    out += [f"*Caveat:* {c}" for c in caveats(t)]
    return out
