"""report/: tests written against plausible bugs no other test caught (a mutation audit).

Each test names the bug it catches: a result-defining setting dropped from the configuration
hash (two different runs look done); the per-row accuracy interval computed without its
bounds (an interval above 100%); `--shard=I/N` rotated (still disjoint and covering); a claim
whose sides are swapped or whose cell selectors change. The claims are tested against records
built from fixed, spelled-out settings, not from the claims' own fields. Everything runs
in-process on synthetic records: no training.
"""

import copy
import dataclasses
import math
import os
import re

import pytest

from normlab.report import claims, cli, design, records, stats, suite, tables, writer
from normlab.trainer.config import Config
from tests.fixtures import ROOT

FULL = design.PRESETS["full"]

# -- the configuration hash ---------------------------------------------------------------------

# Where and how a run is kept, not what it computes: the only Config fields the hash ignores
# (BUILD_NOTES.md, "The report's suite"). Spelled out here, not read from design.py, so a
# result-defining field added to design's list fails this test.
WHERE_OR_HOW_KEPT = {
    "data_dir",
    "strategy",
    "virtual_cpus",
    "collective_timeout",
    "startup_timeout",
    "max_to_keep",
    "checkpoint_every",
    "log_every",
    "check_numerics",
    "steps_per_loop",
}


def _changed(value):
    """Another value of the same type (validity does not matter: the hash reads values)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1.0
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, (tuple, list)):
        return type(value)([*value, *value[-1:]]) if value else (1,)
    if value is None:
        return 1
    raise AssertionError(f"no other value for {value!r}: extend _changed")


def _batch_norm_job() -> design.Job:
    return next(
        j
        for j in design.plan(FULL, "", design.TRAIN_EXAMPLES)
        if j.kind == "run" and j.config.norm == "batch" and j.config.arch == "default"
    )


def test_every_result_defining_config_field_changes_the_hash():
    """Mutant: learning_rate or bn_momentum dropped from the hash (only norm_eps was tested).
    Every field of Config, whatever fields it has now, is changed one at a time."""
    job = _batch_norm_job()
    ignored, fields = set(), [f.name for f in dataclasses.fields(Config)]
    assert {"learning_rate", "bn_momentum", "norm_eps", "seed"} <= set(fields)
    for name in fields:
        config = copy.copy(job.config)
        object.__setattr__(config, name, _changed(getattr(job.config, name)))
        if dataclasses.replace(job, config=config).config_hash == job.config_hash:
            ignored.add(name)
    assert ignored == WHERE_OR_HOW_KEPT
    assert set(design._NOT_HASHED) == WHERE_OR_HOW_KEPT


def test_the_pilots_records_keep_their_hashes_under_the_current_config():
    """A Config field added with a value that computes what the records computed must not
    change their hash (design._HASHED_UNLESS): else a record made before the field existed
    looks like another job. The pilot's records (report/results/pilot/) were made before
    bn_moving_average, bn_population and precise_bn_examples existed."""
    results = os.path.join(ROOT, "report", "results")
    pilot = [r for r in records.load_all(results, "pilot").values() if r["kind"] == "run"]
    assert len(pilot) >= 70
    names = {f.name for f in dataclasses.fields(Config)}
    for r in pilot:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in r["config"].items()}
        config = Config(**{k: v for k, v in values.items() if k in names}, data_dir="")
        job = design.Job(r["name"], "run", tuple(r["sections"]), config,
                         tuple(r["identity"]["analyses"]))  # fmt: skip
        assert job.config_hash == r["config_hash"], r["name"]


# -- the per-row accuracy interval -------------------------------------------------------------


def _run(sections, norm, seed, acc, reach, arch="default", batch=128, lr=0.05, wn="norm", g=0.1):
    """A complete run's record with literal settings: test accuracy `acc`, validation accuracy
    rising linearly from chance at step 0 to the threshold at step `reach`."""
    level = FULL.lstm_threshold if arch == "lstm" else FULL.cnn_threshold
    steps = list(range(50, 2001, 50))
    curve = [min(0.99, 0.1 + (level - 0.1) * s / reach) for s in steps]
    config = dict(
        arch=arch,
        norm=norm,
        seed=seed,
        batch_size=batch,
        learning_rate=lr,
        wn_init=wn,
        recurrent_gain=g,
    )
    name = f"{'+'.join(sections)}_{arch}_{norm}_b{batch}_lr{lr:g}_{wn}_g{g:g}_s{seed}"
    return dict(
        name=name,
        kind="run",
        sections=list(sections),
        config=config,
        status=records.COMPLETE,
        final={"test_accuracy": acc},
        curve={"step": steps, "accuracy": curve, "loss": curve},
        classes=10,
        analyses={},
        ms_per_step=10.0,
        commit="test",
        cpu="test",
        tensorflow="test",
        config_hash="x",
    )


def test_a_three_seed_cell_near_100_percent_gives_a_clipped_row():
    """Mutant: tables.row's accuracy interval without ACC_BOUNDS (its high end above 100%)."""
    recs = [_run(["cnn"], "batch", s, a, 300) for s, a in enumerate((0.999, 0.99, 0.95))]
    ctx = tables.Context(FULL, {r["name"]: r for r in recs})
    (row,) = tables.comparison(ctx, "cnn", ["batch"])
    assert row.runs == 3 and row.acc.high == 1.0 and row.acc.clipped
    assert row.acc.low == pytest.approx(0.9797 - 4.3027 * 0.02631 / 3**0.5, abs=1e-3)
    line = next(x for x in writer._rows_table([row], 0.85).splitlines() if x.startswith("| batch"))
    assert "97.97 [" in line and "100.00]% (clipped)" in line
    assert all(0 <= float(v) <= 100 for v in re.findall(r"(-?\d+\.\d+)[\],]", line))


# -- shards ---------------------------------------------------------------------------------


def test_shard_i_of_n_is_every_nth_job_of_the_plan_from_i():
    """Mutant: shard I takes the jobs of I + 1 (still disjoint and covering: the old test's
    checks pass). The documented definition: every N-th job of the plan from the I-th."""
    jobs = design.plan(FULL, "", design.TRAIN_EXAMPLES)
    for count in (1, 2, 3, 4, 7):
        for index in range(count):
            assert design.shard(jobs, index, count) == jobs[index::count], (index, count)
    assert design.shard(jobs, 0, 4)[0] is jobs[0]


def test_report_main_plans_the_shard_it_is_given(capsys, tmp_path):
    """report.py's main, in-process with its own FlagValues: --plan --shard=1/3 lists exactly
    every third job of the tiny plan from the second (0-based 1)."""
    from absl import flags

    values = cli.define_flags(flags.FlagValues())
    values(["report.py", "--preset=tiny", "--plan", "--shard=1/3", f"--root={tmp_path}"])
    assert cli.main(values) == 0
    out = capsys.readouterr().out
    listed = [line.split()[1] for line in out.split("\n\n")[0].splitlines()[2:]]
    tiny = design.PRESETS["tiny"]
    data_dir = os.path.join(tmp_path, "fixture")
    setup = suite.Setup(tiny, str(tmp_path), str(tmp_path / "results"), data_dir)
    plan = design.plan(tiny, data_dir, len(suite._splits(setup).train_x))
    assert listed == [j.name for j in plan[1::3]]


# -- the claims, against records with fixed names ------------------------------------------------

# The full preset's cells, spelled out: (name, sections of seeds 0-2, sections of seeds 3-4,
# seeds, settings, test accuracy, steps to the threshold). Every claim's side must select
# exactly one of these cells; the values differ from cell to cell, so a side that selects
# another cell (swapped sides, a changed selector) gets other values.
_L = dict(arch="lstm", lr=0.001)
CELLS = [
    ("cnn none", ["cnn"], ["cnn"], 5, dict(norm="none"), 0.860, 700),
    ("cnn batch", ["cnn"], ["cnn"], 5, dict(norm="batch"), 0.912, 250),
    ("cnn layer", ["cnn"], ["cnn"], 5, dict(norm="layer"), 0.890, 400),
    ("cnn group", ["cnn"], None, 3, dict(norm="group"), 0.894, 420),
    ("cnn rms", ["cnn"], None, 3, dict(norm="rms"), 0.898, 380),
    ("weight g=||v||", ["cnn", "wn_init"], None, 3, dict(norm="weight"), 0.870, 500),
    ("weight data init", ["wn_init"], None, 3, dict(norm="weight", wn="data"), 0.885, 450),
    ("adam g=||v||", ["wn_adam"], None, 3, dict(norm="weight", lr=0.001), 0.872, 480),
    ("adam data init", ["wn_adam"], None, 3, dict(norm="weight", wn="data", lr=0.001), 0.889,
     430),
    ("lr none 0.5", ["lr"], None, 3, dict(norm="none", lr=0.5), 0.400, 900),
    ("lr batch 0.5", ["lr"], None, 3, dict(norm="batch", lr=0.5), 0.880, 300),
    ("batch b2", ["batch"], None, 3, dict(norm="batch", batch=2, lr=0.00078125), 0.700, 1200),
    ("batch b16", ["batch"], None, 3, dict(norm="batch", batch=16, lr=0.00625), 0.820, 800),
    ("batch b128", ["batch"], None, 3, dict(norm="batch", batch=128, lr=0.05), 0.800, 850),
    ("layer b2", ["batch"], None, 3, dict(norm="layer", batch=2, lr=0.00078125), 0.853, 600),
    ("layer b16", ["batch"], None, 3, dict(norm="layer", batch=16, lr=0.00625), 0.830, 650),
    ("layer b128", ["batch"], None, 3, dict(norm="layer", batch=128, lr=0.05), 0.855, 610),
    ("group b2", ["batch"], None, 3, dict(norm="group", batch=2, lr=0.00078125), 0.862, 560),
    ("group b16", ["batch"], None, 3, dict(norm="group", batch=16, lr=0.00625), 0.840, 660),
    ("group b128", ["batch"], None, 3, dict(norm="group", batch=128, lr=0.05), 0.864, 570),
    ("lstm none", ["lstm"], None, 3, dict(norm="none", **_L), 0.780, 1100),
    ("lstm batch", ["lstm", "lstm_gain"], ["lstm"], 5, dict(norm="batch", **_L), 0.800, 900),
    ("lstm layer", ["lstm"], ["lstm"], 5, dict(norm="layer", **_L), 0.830, 700),
    ("lstm batch gain 1", ["lstm_gain"], None, 3, dict(norm="batch", g=1.0, **_L), 0.760, 1300),
]
COST = {"none": 20.0, "batch": 34.0, "layer": 31.0, "group": 33.0, "rms": 29.0, "weight": 27.0}

# Each claim's sides by cell name (A first): what the claims table says, written by hand. An
# interaction's side is "<cell at 128> - <cell at 2>": per seed, the first minus the second.
SIDES = {
    "bn_acc": ("cnn batch", "cnn none"),
    "bn_speed": ("cnn batch", "cnn none"),
    "bn_lr": ("lr batch 0.5", "lr none 0.5"),
    "bn_over_ln_cnn": ("cnn batch", "cnn layer"),
    "ln_over_bn_small": ("layer b2", "batch b2"),
    "gn_over_bn_small": ("group b2", "batch b2"),
    "bn_drop_over_ln": ("batch b128 - batch b2", "layer b128 - layer b2"),
    "bn_drop_over_gn": ("batch b128 - batch b2", "group b128 - group b2"),
    "ln_over_bn_lstm": ("lstm layer", "lstm batch"),
    "ln_lstm_speed": ("lstm layer", "lstm none"),
    "bn_lstm_speed": ("lstm batch", "lstm none"),
    "bn_gain": ("lstm batch seeds 0-2", "lstm batch gain 1"),  # gain 0.1: lstm_gain's seeds
    "wn_cost": ("cost weight", "cost batch"),
    "wn_init": ("weight data init", "weight g=||v||"),
    "wn_init_adam": ("adam data init", "adam g=||v||"),
}


def _noise(k: int, seed: int) -> float:
    """Differs per cell and seed, so paired differences between cells are not constant."""
    return math.sin(3.1 * seed + 1.3 * k)


def _universe():
    """Every cell's records, and {cell name: {metric: {seed or round: value}}}."""
    recs, values = [], {}
    for k, (name, first, later, seeds, settings, acc, reach) in enumerate(CELLS):
        cell = values.setdefault(name, {claims.ACCURACY: {}, claims.STEPS: {}})
        kw = dict(settings)
        norm = kw.pop("norm")
        for s in range(seeds):
            a, steps = acc + 0.0005 * _noise(k, s), reach + 5 * _noise(k, s)
            recs.append(_run(first if s < 3 else later, norm, s, a, steps, **kw))
            cell[claims.ACCURACY][s], cell[claims.STEPS][s] = a, steps
    for norm in ("batch", "layer", "group"):
        high, low = values[f"{norm} b128"], values[f"{norm} b2"]
        values[f"{norm} b128 - {norm} b2"] = {
            m: {s: high[m][s] - low[m][s] for s in high[m]} for m in high
        }
    values["lstm batch seeds 0-2"] = {
        m: {s: v for s, v in values["lstm batch"][m].items() if s < 3} for m in values["lstm batch"]
    }
    rounds = {
        n: [ms + 0.3 * _noise(i, r) for r in range(7)] for i, (n, ms) in enumerate(COST.items())
    }
    recs.append(
        dict(name="cost", kind="cost", sections=["cost"], result={"ms_per_step": rounds},
             commit="t", cpu="t", tensorflow="t", config_hash="x")
    )  # fmt: skip
    for norm, r in rounds.items():
        values[f"cost {norm}"] = {claims.MS: dict(enumerate(r))}
    return recs, values



def test_each_claim_reads_the_cells_its_text_names():
    """Mutants: a claim's two sides swapped; a side's selector changed (another norm, batch
    size, section, rate, gain or init). The records' settings are literals (CELLS), each
    claim's sides written by hand (SIDES): each side must read exactly its cell's values, and
    with every claim's A better by construction, every claim is supported."""
    assert set(SIDES) == {c.id for c in claims.CLAIMS}, "a new claim needs its cells in SIDES"
    recs, values = _universe()
    ctx = tables.Context(FULL, {r["name"]: r for r in recs})
    results = {r.claim.id: r for r in claims.evaluate(ctx.records, ctx)}
    for claim_id, (a, b) in SIDES.items():
        result = results[claim_id]
        metric = result.claim.metric
        assert result.a.values == pytest.approx(values[a][metric]), (claim_id, "A", a)
        assert result.b.values == pytest.approx(values[b][metric]), (claim_id, "B", b)
        cells = {a: 1 + (" - " in a), b: 1 + (" - " in b)}  # an interaction reads two cells
        assert result.a.runs == cells[a] * len(values[a][metric]), (claim_id, "A", a)
        assert result.b.runs == cells[b] * len(values[b][metric]), (claim_id, "B", b)
        assert result.verdict == stats.SUPPORTED, (claim_id, result.evidence())
