"""report.py: the suite reuses, resumes and records runs; the report, its claims and statistics.

The suite runs once per module on the `tiny` preset (26 runs of a few steps on the IDX
fixture); the other tests look at what it left, run it again, or test the statistics and the
claims on numbers made up to hit each verdict.
"""

import os
import re
import subprocess
import sys
import types

import pytest

from normlab import machine
from normlab.report import claims, design, pipeline, stats, suite
from normlab.report.tables import SweepCell
from normlab.trainer.errors import UsageError
from normlab.trainer.trainer import Trainer
from tests.fixtures import ROOT, write_idx_dataset


class _Crash(Exception):
    pass


def _read(path):
    with open(path) as fh:
        return fh.read()


def _run_files(root):
    """{path: mtime} of every file in the run directories (not the report's own files)."""
    out = {}
    for name in os.listdir(root):
        run = os.path.join(root, name)
        if not (os.path.isdir(run) and name.startswith(("default_", "lstm_"))):
            continue
        for dirpath, _, files in os.walk(run):
            for f in files:
                path = os.path.join(dirpath, f)
                out[path] = os.stat(path).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny suite, run once, with one run interrupted beforehand."""
    base = tmp_path_factory.mktemp("report")
    data_dir = str(base / "fmnist")
    write_idx_dataset(data_dir)
    options = pipeline.Options(root=str(base / "runs"), preset="tiny", data_dir=data_dir)
    splits = pipeline.load_data(options)
    specs = design.plan(design.PRESETS["tiny"], data_dir, len(splits.train_x))

    # A run killed at its last step, 16: its last checkpoint is step 8 (checkpoints every 8
    # steps; the progress line of a step comes before its checkpoint).
    partial = next(
        s
        for s in specs
        if s.config.norm == "layer" and s.config.batch_size == 4 and s.config.arch == "default"
    )
    assert partial.config.checkpoint_every == 8 and partial.config.train_steps == 16

    def crash_at_16(line):
        if line.startswith("step 16/"):
            raise _Crash()

    with pytest.raises(_Crash):
        Trainer(
            partial.config,
            os.path.join(options.root, partial.name),
            splits=splits,
            log=crash_at_16,
        ).train_and_evaluate()
    assert suite.state(options.root, partial) == suite.PARTIAL

    lines = []
    path = pipeline.generate(options, pipeline.Log(options.root, verbose=True, echo=lines.append))
    return types.SimpleNamespace(
        options=options, specs=specs, partial=partial, lines=lines, report=path, base=base
    )


def test_every_run_done_the_partial_one_resumed_the_diverged_one_recorded(done):
    for spec in done.specs:
        assert suite.state(done.options.root, spec) in (suite.COMPLETE, suite.DIVERGED)
    text = "\n".join(done.lines)
    assert f"resuming {done.partial.name}" in text
    assert re.search(r"resumed from .*ckpt-8 at step 8", text)
    assert suite.load_outcome(done.options.root, done.partial).metrics["step"] == 16
    assert re.search(rf"\[ *\d+/{len(done.specs)}\] training .* ETA \d+:\d\d:\d\d", text)
    diverged = [s for s in done.specs if s.config.learning_rate == 1e6]
    assert diverged
    for spec in diverged:
        outcome = suite.load_outcome(done.options.root, spec)
        assert outcome.status == suite.DIVERGED and outcome.diverged_at_step >= 1
        assert not os.path.exists(os.path.join(done.options.root, spec.name, "metrics.json"))
    assert "diverged @" in _read(done.report)


def test_a_second_invocation_reuses_every_run_and_analysis(done):
    before = _run_files(done.options.root)
    lines = []
    pipeline.generate(done.options, pipeline.Log(done.options.root, echo=lines.append))
    runs = [line for line in lines if re.match(r"report: \[ *\d+/", line)]
    assert len(runs) == len(done.specs) and all(" reused " in line for line in runs)
    assert not any("analysis" in line for line in lines)  # cached analyses: nothing computed
    assert _run_files(done.options.root) == before  # no checkpoint, summary or metric touched
    for spec in done.specs:
        record = suite.read_json(os.path.join(done.options.root, spec.name, suite.RECORD_FILE))
        assert record["sessions"] == 1  # the suite trained each once (the crash was before it)
        assert record["commits"] == [machine.commit()]  # which code trained it


def test_report_has_the_claims_every_section_and_its_figures(done):
    text = _read(done.report)
    for heading in (
        "## Findings: the papers' claims, tested",
        "## Answer",
        "## CNN: with and without normalization",
        "## CNN trained to convergence",
        "## Batch-norm CNN trained longer",
        "## Custom vs TensorFlow's built-ins",
        "## CNN: batch size",
        "## CNN: learning rate",
        "## LSTM: recurrent normalization",
        "## LSTM: batch size",
        "## Inside the network",
        "## Cost",
        "## Appendix: the runs",
    ):
        assert heading in text, heading
    table = re.findall(
        r"^\| (\d) \| .*\| \*\*(supported|not supported|mixed|not tested)\*\* \|", text, re.M
    )
    assert [int(n) for n, _ in table] == list(range(1, len(claims.CLAIMS) + 1))
    assert text.count("Budget: ") >= 8  # every section states its budget
    assert re.search(r"\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\]%", text)  # means with intervals
    for fact in ("--preset=tiny", "Wall time of the suite", "TensorFlow 2.", "all trained by"):
        assert fact in text, fact
    links = set(re.findall(r"\]\((figures/[^)]+\.png)\)", text))
    assert len(links) == 9
    assert "Published: 2 conv + pooling + BN reaches 93.4%" in text
    for link in links:
        assert os.path.getsize(os.path.join(os.path.dirname(done.report), link)) > 1000, link


def test_report_only_writes_the_report_without_training(done):
    before = _run_files(done.options.root)
    out = str(done.base / "published")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "report.py"),
            f"--root={done.options.root}",
            "--preset=tiny",
            f"--data_dir={done.options.data_dir}",
            "--report_only",
            f"--out={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "training" not in result.stdout
    assert os.path.isfile(os.path.join(out, "figures", "cnn.png"))
    assert _run_files(done.options.root) == before
    assert "--report_only" in _read(os.path.join(out, "REPORT.md"))


def test_report_only_fails_clearly_when_runs_are_missing(done, tmp_path):
    empty = pipeline.Options(
        root=str(tmp_path / "none"), preset="tiny", data_dir=done.options.data_dir, report_only=True
    )
    with pytest.raises(UsageError, match="does not exist"):
        pipeline.generate(empty, pipeline.Log(empty.root, echo=lambda _: None))
    os.makedirs(empty.root)
    n = len(done.specs)
    with pytest.raises(UsageError, match=rf"{n} of the {n} runs .* are missing or unfinished"):
        pipeline.generate(empty, pipeline.Log(empty.root, echo=lambda _: None))
    assert set(os.listdir(empty.root)) <= {pipeline.LOG_FILE}  # no run, analysis or report


def test_a_root_holding_runs_of_other_settings_is_refused(done, tmp_path):
    other = str(tmp_path / "copy")
    write_idx_dataset(other)  # the same data elsewhere: a different --data_dir in every run
    options = pipeline.Options(root=done.options.root, preset="tiny", data_dir=other)
    before = _run_files(done.options.root)
    with pytest.raises(UsageError, match=r"holds a run with other settings .*--data_dir"):
        pipeline.generate(options, pipeline.Log(options.root, echo=lambda _: None))
    assert _run_files(done.options.root) == before


def test_report_program_help_and_plan():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "report.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (
        result.returncode == 0 and "--preset" in result.stdout and "--report_only" in result.stdout
    )


def test_full_preset_design():
    """Seeds everywhere, every section planned, the sweeps' examples equal per batch size."""
    preset = design.PRESETS["full"]
    specs = design.plan(preset, "", 55000)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    for section in design.SECTIONS:
        cells = {}
        for spec in (s for s in specs if section in s.sections):
            c = spec.config
            key = (c.arch, c.norm, c.norm_impl, c.batch_size, c.learning_rate)
            cells.setdefault(key, set()).add(c.seed)
        assert cells, section
        # Every custom cell has >= 3 seeds; the built-ins are compared at seed 0 (impl, lstm).
        custom = [seeds for key, seeds in cells.items() if key[2] == "custom"]
        if section != "impl":
            assert custom and all(len(seeds) >= 3 for seeds in custom), section
    for section in ("batch", "lstm_batch"):
        sweep = [s for s in specs if section in s.sections]
        examples = {s.examples for s in sweep}
        assert max(examples) / min(examples) < 1.01, section  # the same examples per size
    assert min(preset.batch_sizes) <= 2 and {4, 16, 128} <= set(preset.lstm_batch_sizes)


# -- statistics and verdicts ---------------------------------------------------------------------


def test_t_quantiles_and_intervals():
    # Student's t 97.5% quantiles (any table): df 1, 2, 4, 30.
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)):
        assert stats.t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    e = stats.mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: half width 4.3027 / sqrt(3)
    assert (e.mean, e.n) == (2.0, 3)
    assert e.high - e.mean == pytest.approx(4.3027 / 3**0.5, abs=1e-4)
    d = stats.difference_ci([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # Welch: df 2, se 1 / sqrt(3)
    assert d.mean == 2.0 and d.low == pytest.approx(2.0 - 4.3027 / 3**0.5, abs=1e-4)
    assert stats.mean_ci([]) is None and stats.mean_ci([0.5]).n == 1


def _estimate(low, high):
    return stats.Estimate((low + high) / 2, low, high, 3)


def test_verdict_rules():
    above, across, below = _estimate(0.01, 0.03), _estimate(-0.01, 0.02), _estimate(-0.03, -0.01)
    assert stats.verdict_greater([above, above]) == stats.SUPPORTED
    assert stats.verdict_greater([above, across]) == stats.MIXED
    assert stats.verdict_greater([across, below]) == stats.NOT_SUPPORTED
    assert stats.verdict_greater([None, stats.Estimate(1.0, 1.0, 1.0, 1)]) == stats.NOT_TESTED
    small, large = _estimate(-0.004, 0.006), _estimate(0.02, 0.05)
    assert stats.verdict_equivalent([small], 0.01) == stats.SUPPORTED
    assert stats.verdict_equivalent([large], 0.01) == stats.NOT_SUPPORTED
    assert stats.verdict_equivalent([small, large], 0.01) == stats.MIXED


def _results(**kwargs):
    base = dict(
        lr=[],
        batch=[],
        lstm_batch=[],
        cnn=None,
        converged=None,
        long=None,
        lstm=None,
        chance=0.1,
        preset=design.PRESETS["full"],
        cost_ms={},
        cost_rounds={},
        parity_table=[],
        parity_layers={},
    )
    return types.SimpleNamespace(**{**base, **kwargs})


def _cell(norm, setting, accs, diverged=0):
    return SweepCell(norm, setting, len(accs) + diverged, diverged, stats.mean_ci(accs), accs)


def test_claims_follow_the_numbers():
    """The same claim flips verdict with the numbers: layer beats batch at B <= 4."""
    wins = [
        _cell("layer", 2, [0.88, 0.89, 0.885]),
        _cell("batch", 2, [0.70, 0.72, 0.71]),
        _cell("layer", 4, [0.88, 0.885, 0.89]),
        _cell("batch", 4, [0.80, 0.81, 0.805]),
    ]
    assert claims.layer_beats_batch_small(_results(batch=wins))[1] == stats.SUPPORTED
    loses = [_cell("layer", 2, [0.70, 0.71, 0.72]), _cell("batch", 2, [0.88, 0.89, 0.885])]
    assert claims.layer_beats_batch_small(_results(batch=loses))[1] == stats.NOT_SUPPORTED
    # A diverged batch-norm seed counts at chance: layer norm then wins at that size.
    diverged = [_cell("layer", 2, [0.80, 0.81, 0.805]), _cell("batch", 2, [], diverged=3)]
    assert claims.layer_beats_batch_small(_results(batch=diverged))[1] == stats.SUPPORTED
    assert claims.group_norm_claim(_results())[1] == stats.NOT_TESTED


def test_learning_rate_claim_needs_an_order_of_magnitude():
    lr = [
        _cell("none", 0.05, [0.88, 0.885, 0.89]),
        _cell("none", 0.5, [], diverged=3),
        _cell("none", 5.0, [], diverged=3),
        _cell("batch", 0.05, [0.90, 0.905, 0.91]),
        _cell("batch", 0.5, [0.905, 0.90, 0.91]),
        _cell("batch", 5.0, [0.89, 0.90, 0.895]),
    ]
    evidence, verdict = claims.higher_learning_rates(_results(lr=lr))
    assert verdict == stats.SUPPORTED and "(100x)" in evidence
    lr[-1] = _cell("batch", 5.0, [], diverged=3)  # both diverge at 5.0: better at 0.5 only
    assert claims.higher_learning_rates(_results(lr=lr))[1] == stats.MIXED
