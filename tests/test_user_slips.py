"""What a new user types first, driven through the real programs (subprocesses).

Help of every program, a finished run started again, a run interrupted and resumed, fewer
steps than done, a directory of runs given as a run, eval.py's partial failures and its table,
the TensorBoard records. (CIFAR-10 offline and a missing worker: test_offline_cifar.py and
test_startup.py.)
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from normlab.trainer import summaries
from tests.fixtures import ROOT
from tests.fixtures import run_program as run

# Tests reading this module's fixture run on one worker (--dist loadgroup): it is made once.
pytestmark = pytest.mark.xdist_group("user_slips")

FAST = [
    "--batch_size=32",
    "--validation_size=64",
    "--widths=8",
    "--dense_units=16",
    "--checkpoint_every=4",
    "--eval_every=4",
    "--log_every=2",
    "--summary_every=2",
    "--histogram_every=100",
    "--eval_batch_size=64",
]
PROGRAMS = ["train.py", "eval.py", "report.py", "parity.py"]
MODULES = [
    "bench.ops",
    "bench.model",
    "bench.keras_fit",
    "scripts.kill_resume",
    "normlab.trainer.config",
]


def _hashes(directory) -> dict:
    out = {}
    for dirpath, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Runs the commands concurrently (each mostly waits for TensorFlow's import)."""
    procs = [
        subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    results = []
    for command, p in zip(commands, procs):
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, p.returncode, out, err))
    return results


@pytest.mark.slow
def test_every_program_and_module_prints_its_help():
    """Every help flag of every program, and --help of every `python -m` entry point: exit 0,
    the usage and the flags, and no TensorFlow start-up lines."""
    programs = [[p, "--help"] for p in PROGRAMS] + [
        ["train.py", flag] for flag in ("-h", "--helpfull", "--helpshort")
    ]
    commands = [[sys.executable, os.path.join(ROOT, p), flag] for p, flag in programs]
    commands += [[sys.executable, "-m", m, "--help"] for m in MODULES]
    for command, r in zip(commands, _run_all(commands)):
        assert r.returncode == 0, (command, r.stderr)
        assert r.stderr.strip() == "", (command, r.stderr)
        if "-m" in command:
            assert "usage" in r.stdout.lower(), command
        else:
            assert "Usage:" in r.stdout and "Flags:" in r.stdout, command


@pytest.mark.slow
def test_a_bad_flag_names_a_help_command_that_works():
    r = run("train.py", "--bogus=1")
    assert r.returncode == 2 and "Run train.py --help for every flag." in r.stderr
    assert run("train.py", "--help").returncode == 0


@pytest.mark.slow
def test_finished_interrupted_resumed_and_shortened_runs(tmp_path, idx_dir):
    """A run interrupted by SIGINT, resumed, then started again: metrics.json has every field,
    training time counts every segment, the second start changes nothing, and fewer steps
    than done are refused without writing."""
    model_dir = str(tmp_path / "run")
    flags = [f"--model_dir={model_dir}", f"--data_dir={idx_dir}", "--train_steps=40", *FAST]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step 10/"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    r = run("train.py", f"--model_dir={model_dir}")
    assert r.returncode == 0, r.stderr
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    for field in (
        "train_loss",
        "train_accuracy",
        "train_seconds",
        "train_images_per_sec",
        "train_steps_per_sec",
        "test_accuracy",
        "val_accuracy",
        "step",
    ):
        assert field in metrics, field
    # The time of both segments: the resumed segment alone trained 30 of the 40 steps.
    assert metrics["train_steps_per_sec"] == pytest.approx(40 / metrics["train_seconds"])
    before = _hashes(model_dir)
    r = run("train.py", f"--model_dir={model_dir}")
    assert r.returncode == 0 and "already trained" in r.stdout
    assert _hashes(model_dir) == before  # nothing saved changed, metrics.json included
    r = run("train.py", f"--model_dir={model_dir}", "--train_steps=20")
    assert r.returncode == 2 and "--train_steps=40" in r.stderr
    assert _hashes(model_dir) == before


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, idx_dir):
    """A directory holding three short runs (batch, layer and RMS norm), trained concurrently."""
    root = tmp_path_factory.mktemp("runs")
    commands = [
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            f"--model_dir={root / norm}",
            f"--data_dir={idx_dir}",
            "--train_steps=4",
            f"--norm={norm}",
            *FAST,
        ]
        for norm in ("batch", "layer", "rms")
    ]
    for r in _run_all(commands):
        assert r.returncode == 0, r.stderr
    return root


@pytest.mark.slow
def test_a_directory_of_runs_is_not_a_run(runs_root, idx_dir):
    before = _hashes(runs_root)
    r = run("train.py", f"--model_dir={runs_root}", f"--data_dir={idx_dir}")
    assert r.returncode == 2 and "holds other runs (batch, layer, rms)" in r.stderr
    assert _hashes(runs_root) == before


@pytest.mark.slow
def test_eval_reports_each_failure_once_and_evaluates_the_rest(runs_root):
    r = run("eval.py", f"--model_dirs={runs_root},{runs_root / 'nope'}")
    assert r.returncode == 1, r.stderr
    assert f"Runs in {runs_root};" in r.stdout
    for i, norm in enumerate(("batch", "layer", "rms"), 1):
        assert re.search(rf"^{i} +{norm} ", r.stdout, re.M), r.stdout
    assert r.stdout.count("nope") == 1 and "no such directory" in r.stdout
    r = run("eval.py", f"--model_dirs={runs_root / 'batch'}", "--checkpoint=ckpt-999")
    assert r.returncode == 1 and (r.stdout + r.stderr).count("ckpt-999") == 1


@pytest.mark.slow
def test_eval_compares_any_number_of_runs_in_100_columns(runs_root, tmp_path):
    out = tmp_path / "cmp.json"
    r = run("eval.py", f"--model_dirs={runs_root}", f"--json={out}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, r.stdout
    assert all(line == line.rstrip() for line in lines)  # no trailing spaces
    header = next(line for line in lines if line.startswith("#  run"))
    assert "norm" in header and "lr" not in header  # only the settings that differ
    matrix = json.load(open(out))["prediction_agreement"]
    assert len(matrix) == 3 and all(matrix[i][i] == 1.0 for i in range(3))


@pytest.mark.slow
def test_course_net_records_the_sizes_it_uses(tmp_path, idx_dir):
    model_dir = tmp_path / "course"
    r = run(
        "train.py",
        f"--model_dir={model_dir}",
        f"--data_dir={idx_dir}",
        "--arch=course",
        "--train_steps=2",
        "--batch_size=32",
        "--validation_size=64",
    )
    assert r.returncode == 0, r.stderr
    flags = (model_dir / "flags.txt").read_text()
    assert "--widths=30\n" in flags and "--dense_units=100\n" in flags
    assert "# --lstm_units=128  (not used by --arch=course)" in flags
    r = run("train.py", f"--model_dir={tmp_path / 'x'}", "--arch=course", "--widths=16")
    assert r.returncode == 2 and "--widths does not apply to --arch=course" in r.stderr


@pytest.mark.slow
def test_tensorboard_records(tmp_path, idx_dir):
    """Histograms (weights, gradients, activations) at the first and last step; training and
    validation on the same tags; HParams with the experiment's settings, led by the final test
    and validation metrics."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    model_dir = tmp_path / "run"
    r = run(
        "train.py",
        f"--model_dir={model_dir}",
        f"--data_dir={idx_dir}",
        "--train_steps=6",
        "--norm=layer",
        *FAST,
    )
    assert r.returncode == 0, r.stderr

    def load(path):
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
        acc.Reload()
        return acc

    train, val = load(model_dir / "train"), load(model_dir / "eval")
    for tag in (
        summaries.weights_histogram("conv1", "kernel"),
        summaries.gradients_histogram("conv1", "kernel"),
        summaries.activations_histogram("conv1", "pre"),
        summaries.activations_histogram("dense1", "post"),
    ):
        assert [e.step for e in train.Tensors(tag)] == [1, 6], tag
    assert summaries.LOSS in train.Tags()["tensors"] and summaries.LOSS in val.Tags()["tensors"]
    hparams = load(model_dir)
    meta = hparams.PluginTagToContent("hparams")
    config = plugin_data_pb2.HParamsPluginData.FromString(meta["_hparams_/experiment"])
    metrics = [(m.name.tag, m.name.group) for m in config.experiment.metric_infos]
    assert metrics[:2] == [
        (summaries.FINAL_TEST_ACCURACY, summaries.EVAL_DIR),
        (summaries.FINAL_VAL_ACCURACY, summaries.EVAL_DIR),
    ]
    # ... and the run directory the dashboard reads them from holds them.
    assert summaries.FINAL_TEST_ACCURACY in val.Tags()["tensors"]
    session = plugin_data_pb2.HParamsPluginData.FromString(meta["_hparams_/session_start_info"])
    recorded = set(session.session_start_info.hparams)
    for name in (
        "norm",
        "norm_impl",
        "batch_size",
        "learning_rate",
        "widths",
        "groups",
        "bn_momentum",
        "augment",
        "lr_schedule",
        "momentum",
        "total_steps",
        "epochs",
        "strategy",
        "replicas",
        "precision",
        "seed",
    ):
        assert name in recorded, name


@pytest.mark.slow
def test_hparams_one_trial_per_run_directory_with_the_settings_that_made_it(tmp_path, idx_dir):
    """Each run directory is its own HParams trial (TensorBoard names an unnamed trial by the
    run's path, so cmp/group and lstm/group, or a copy of a run, never merge), and a restart
    with other settings leaves one record: the settings that produced the metrics."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    def session(model_dir):
        files = [f for f in os.listdir(model_dir) if f.startswith("events.out.tfevents.")]
        assert len(files) == 1, files
        acc = event_accumulator.EventAccumulator(str(model_dir), size_guidance={"tensors": 0})
        acc.Reload()
        meta = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        return plugin_data_pb2.HParamsPluginData.FromString(meta).session_start_info

    model_dir = tmp_path / "lstm" / "group"
    args = (f"--model_dir={model_dir}", f"--data_dir={idx_dir}", "--train_steps=3", *FAST)
    r = run("train.py", *args, "--learning_rate=1e30", "--norm=none")
    assert r.returncode == 1 and "non-finite" in r.stderr
    r = run("train.py", *args, "--learning_rate=0.01", "--norm=none")
    assert r.returncode == 2 and "--start_over" in r.stderr  # summaries, no checkpoint
    r = run("train.py", *args, "--learning_rate=0.01", "--norm=none", "--start_over")
    assert r.returncode == 0, r.stderr
    info = session(model_dir)
    assert info.group_name == ""  # TensorBoard groups it by the run's own path
    assert info.hparams["learning_rate"].number_value == 0.01
