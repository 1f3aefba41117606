"""report.py: the suite reuses, resumes and records runs; the report and its findings.

The suite runs once per module on the `tiny` preset (14 runs of a few steps on the IDX
fixture, ~45 s on 2 cores); the other tests look at what it left or run it again.
"""

import os
import re
import subprocess
import sys
import types

import pytest

from normlab.report import experiments, findings, pipeline, suite
from normlab.report.results import BatchRow, ImplRow, LrRow, NormRow, Tables
from tests.fixtures import write_idx_dataset
from normlab.trainer.errors import UsageError
from normlab.trainer.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        if not (os.path.isdir(run) and name.startswith("norm-")):
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
    specs = experiments.plan(experiments.PRESETS["tiny"], data_dir, len(splits.train_x))

    # A run killed at step 4 of 6: its last checkpoint is step 2 (checkpoints every 2 steps;
    # the progress line of a step comes before its checkpoint).
    partial = next(s for s in specs if s.config.norm == "layer" and "norms" in s.sections)
    assert partial.config.checkpoint_every == 2 and partial.config.train_steps == 6

    def crash_at_4(line):
        if line.startswith("step 4/"):
            raise _Crash()

    with pytest.raises(_Crash):
        Trainer(
            partial.config, suite.run_dir(options.root, partial), splits=splits, log=crash_at_4
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
    assert re.search(r"resumed from .*ckpt-2 at step 2", text)
    resumed = suite.load_outcome(done.options.root, done.partial)
    assert resumed.metrics["step"] == 6
    assert re.search(r"\[ *\d+/14\] training .* ETA \d+:\d\d:\d\d", text)

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


def test_report_has_every_section_and_its_figures(done):
    text = _read(done.report)
    for heading in (
        "## Findings",
        "## 1. With and without normalization",
        "## 2. Custom vs TensorFlow built-in",
        "### 2a.",
        "### 2b.",
        "## 3. Batch size",
        "## 4. Learning rate",
        "## 5. What normalization does inside the network",
        "## 6. Cost",
    ):
        assert heading in text, heading
    for fact in ("--preset=tiny", "Wall time of the suite", "TensorFlow 2.", "cores", "Settings:"):
        assert fact in text, fact
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    assert len(links) == 8
    for link in links:
        path = os.path.join(os.path.dirname(done.report), link)
        assert os.path.getsize(path) > 1000, link
    assert "*Caveat:* One seed per setting" in text


def test_report_only_writes_the_report_without_training(done):
    before = _run_files(done.options.root)
    os.remove(done.report)
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
    assert os.path.isfile(os.path.join(out, "REPORT.md"))
    assert os.path.isfile(os.path.join(out, "figures", "fig1_validation.png"))
    assert _run_files(done.options.root) == before
    assert "--report_only" in _read(os.path.join(out, "REPORT.md"))


def test_report_only_fails_clearly_when_runs_are_missing(done, tmp_path):
    empty = pipeline.Options(
        root=str(tmp_path / "none"), preset="tiny", data_dir=done.options.data_dir, report_only=True
    )
    with pytest.raises(UsageError, match="does not exist"):
        pipeline.generate(empty, pipeline.Log(empty.root, echo=lambda _: None))
    os.makedirs(empty.root)
    with pytest.raises(UsageError, match=r"14 of the 14 runs .* are missing or unfinished"):
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


def test_full_preset_design():
    preset = experiments.PRESETS["full"]
    specs = experiments.plan(preset, "", 55000)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 59
    assert len(preset.seeds) >= 3 and set(preset.norms) == {
        "none",
        "batch",
        "layer",
        "weight",
        "group",
    }
    assert min(preset.batch_sizes) == 2 and max(preset.batch_sizes) == 256
    assert max(preset.learning_rates) / min(preset.learning_rates) >= 30
    sweep = [s for s in specs if experiments.SECTION_BATCH in s.sections]
    for spec in sweep:  # the same examples at every batch size; linear lr scaling
        assert abs(spec.examples - 55000) < spec.config.batch_size
        assert spec.config.learning_rate == pytest.approx(0.05 * spec.config.batch_size / 128)
    shared = [s for s in specs if len(s.sections) > 1]
    assert {experiments.SECTION_BATCH, experiments.SECTION_LR} <= {
        x for s in shared for x in s.sections
    }
    estimate = sum(suite.prior_seconds(s) for s in specs)
    assert 45 * 60 < estimate < 90 * 60


def test_estimator_uses_measured_runs():
    preset = experiments.PRESETS["full"]
    specs = experiments.plan(preset, "", 55000)
    a, b = specs[0], next(s for s in specs if s.config.batch_size == 2)
    estimator = suite.Estimator()
    assert not estimator.measured and estimator.seconds(a) == suite.prior_seconds(a)
    estimator.add(suite.Outcome(a, suite.COMPLETE, {}, wall_seconds=2 * suite.prior_seconds(a)))
    assert estimator.seconds(a) == pytest.approx(2 * suite.prior_seconds(a))
    assert estimator.seconds(b) == pytest.approx(2 * suite.prior_seconds(b))  # scaled prior


# -- findings from hand-made tables -----------------------------------------------------------


def _tables(bn128, ln128, bn2, ln2, bn_top_lr_ok: bool) -> Tables:
    t = Tables(preset="hand", seeds=3, norm_epochs=5.0, reference_batch=128, threshold=0.9)
    t.norms = [
        NormRow(
            "none", 3, 0, [0.900, 0.902, 0.898], [0.3] * 3, [0.9] * 3, [800, 900, 1000], [], []
        ),
        NormRow("batch", 3, 0, bn128, [0.25] * 3, [0.92] * 3, [300, 320, 340], [], []),
        NormRow("layer", 3, 0, ln128, [0.26] * 3, [0.91] * 3, [400, 420, 440], [], []),
    ]
    t.batch = [
        BatchRow("batch", 2, 0.00078, 27500, "complete", bn2, None, bn2 - 0.05, bn2),
        BatchRow("layer", 2, 0.00078, 27500, "complete", ln2, None),
        BatchRow("batch", 256, 0.1, 214, "complete", 0.90, None, 0.899, 0.90),
        BatchRow("layer", 256, 0.1, 214, "complete", 0.88, None),
    ]
    t.lr = [
        LrRow("none", 0.05, 429, "complete", 0.88, None),
        LrRow("none", 1.5, 429, "diverged", None, 7),
        LrRow("batch", 0.05, 429, "complete", 0.89, None),
        LrRow(
            "batch",
            1.5,
            429,
            "complete" if bn_top_lr_ok else "diverged",
            0.87 if bn_top_lr_ok else None,
            None if bn_top_lr_ok else 3,
        ),
    ]
    t.impl = [ImplRow("batch", 0.91, 0.912, 0.004, 150, 50)]
    return t


def test_findings_follow_the_numbers():
    batch_ahead = "\n".join(
        findings.findings(
            _tables(
                [0.925, 0.927, 0.926], [0.910, 0.912, 0.911], bn2=0.80, ln2=0.86, bn_top_lr_ok=True
            )
        )
    )
    assert "Batch norm is the best normalization" in batch_ahead
    assert "agrees with the layer-norm paper's section 6.7" in batch_ahead
    assert "layer norm beats batch norm at batch size 2" in batch_ahead
    assert "batch norm is ahead at 256" in batch_ahead
    assert "crossover between B=2 and B=256" in batch_ahead
    assert "strongly supports the claim that batch norm allows much higher" in batch_ahead
    assert "92.60% ± 0.10 (3 seeds)" in batch_ahead  # the numbers it rests on are quoted

    layer_ahead = "\n".join(
        findings.findings(
            _tables(
                [0.905, 0.907, 0.906], [0.920, 0.922, 0.921], bn2=0.86, ln2=0.80, bn_top_lr_ok=False
            )
        )
    )
    assert "Layer norm is the best normalization" in layer_ahead
    assert "contradicts the layer-norm paper's section 6.7" in layer_ahead
    assert "layer norm beats batch norm at no batch size" in layer_ahead
    assert "does not support the claim that batch norm allows much higher" in layer_ahead

    tied = "\n".join(
        findings.findings(
            _tables([0.91, 0.93, 0.92], [0.915, 0.925, 0.92], bn2=0.85, ln2=0.85, bn_top_lr_ok=True)
        )
    )
    assert "not clearly ahead" in tied and "a tie at this number of seeds" in tied
    assert "does not settle the layer-norm paper's section 6.7" in tied


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "weight"])
def test_float64_reference_matches_the_core_functions(norm):
    import numpy as np
    import tensorflow as tf

    from normlab import core
    from normlab.report.analyses import reference64

    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, (8, 6, 6, 12))
    gamma, beta = rng.normal(1, 0.3, 12), rng.normal(0, 0.3, 12)
    if norm == "weight":
        got = core.weight_norm(tf.constant(x), tf.constant(gamma))
        ref = reference64("weight", x, {"g": gamma})
    else:
        args = (tf.constant(x), tf.constant(gamma), tf.constant(beta))
        got = {
            "batch": lambda: core.batch_norm(*args, 1e-3),
            "layer": lambda: core.layer_norm(*args, 1e-3),
            "group": lambda: core.group_norm(*args, 4, 1e-3),
        }[norm]()
        ref = reference64(norm, x, {"gamma": gamma, "beta": beta}, 1e-3, groups=4)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


def _parity(custom_err64: float, builtin_err64: float, forward_rel: float) -> dict:
    row = {
        "layer": "conv1_norm",
        "builtin": "fused_batch_norm",
        "shape": [128, 28, 28, 32],
        "reduced": 100352,
        "forward_abs": forward_rel * 10,
        "forward_rel": forward_rel,
        "grad_rel": {"x": forward_rel, "gamma": forward_rel, "beta": 1e-7},
        "custom_err64": custom_err64,
        "builtin_err64": builtin_err64,
    }
    model = {"grad_rel_max": 2e-3, "grad_rel_worst": "conv2/kernel", "control_grad_rel_worst": 1e-6}
    return {"norm": "batch", "layers": [row], "model": model}


def test_custom_vs_builtin_verdict_follows_the_float64_reference():
    t = Tables(preset="hand")
    t.parity = [_parity(custom_err64=1e-6, builtin_err64=5e-4, forward_rel=7e-5)]
    text = findings.custom_vs_builtin(t)
    assert "the built-in's float32 rounding of its statistics over 100352 values" in text
    t.parity = [_parity(custom_err64=5e-4, builtin_err64=1e-6, forward_rel=7e-5)]
    assert "the custom code is the less accurate one" in findings.custom_vs_builtin(t)
    same = _parity(custom_err64=1e-6, builtin_err64=1e-6, forward_rel=1e-7)
    same["model"]["control_grad_rel_worst"] = 1e-3  # a cancelling gradient: rounding-sensitive
    t.parity = [same]
    assert "the same function up to float32 rounding" in findings.custom_vs_builtin(t)
