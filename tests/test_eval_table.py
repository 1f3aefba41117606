"""eval.py over a directory of mixed runs: the status of each evaluated checkpoint (a run that
diverged after its first checkpoint says so), why a run without checkpoint has none (training
or stopped), readable losses, full class names, a dataset column when the runs differ."""

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess

import numpy as np
import pytest

from normlab.trainer.config import Config
from normlab.trainer.evaluation import (
    Comparison,
    RunResult,
    checkpoint_status,
    evaluate_runs,
    lock_holder,
)
from tests.fixtures import run_program

SMALL = ("--batch_size=16", "--validation_size=64", "--eval_every=4", "--log_every=4",
         "--summary_every=4", "--checkpoint_every=4")  # fmt: skip
CNN = ("--widths=8", "--dense_units=16")


@pytest.mark.slow
def test_eval_shows_each_runs_status_and_readable_losses(tmp_path, idx_dir):
    root = tmp_path / "runs"

    def train(name, *args):
        return run_program("train.py", f"--model_dir={root / name}", f"--data_dir={idx_dir}",
                           *SMALL, *args)  # fmt: skip

    assert train("done", "--train_steps=8", *CNN).returncode == 0  # checkpoints 4 and 8
    assert train("lstm", "--train_steps=4", "--arch=lstm", "--lstm_units=8", "--norm=layer",
                 "--optimizer=adam", "--learning_rate=0.001").returncode == 0  # fmt: skip
    # Diverges after its first checkpoint (step 2): evaluated at that checkpoint.
    late = train("late", "--train_steps=8", *CNN, "--norm=none", "--learning_rate=30",
                 "--checkpoint_every=2")  # fmt: skip
    assert late.returncode == 1
    diverged = json.loads((root / "late" / "metrics.json").read_text())["diverged_at_step"]
    assert diverged > 2, f"the run must diverge after its first checkpoint, not at {diverged}"
    # Diverges before its first checkpoint (step 4): nothing to evaluate.
    assert train("early", "--train_steps=8", *CNN, "--norm=none",
                 "--learning_rate=3e4").returncode == 1  # fmt: skip
    # Unfinished: 8 steps planned, stopped after 4 (its run directory as a SIGKILL leaves it).
    assert train("half", "--train_steps=4", *CNN).returncode == 0
    flags = (root / "half" / "flags.txt").read_text().replace("--train_steps=4", "--train_steps=8")
    (root / "half" / "flags.txt").write_text(flags)
    os.remove(root / "half" / "metrics.json")
    # Before their first checkpoint: one killed (its lock names a process that is gone), one
    # still training (its lock names a live process: this one).
    for name, pid in (("killed", _dead_pid()), ("live", os.getpid())):
        os.makedirs(root / name)
        shutil.copy(root / "done" / "flags.txt", root / name / "flags.txt")
        owner = {"pid": pid, "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}
        (root / name / "lock").write_text(json.dumps(owner))
    r = run_program("eval.py", f"--model_dirs={root}")
    assert r.returncode == 1, r.stderr  # some runs could not be evaluated
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line[:1].isdigit()}
    assert "finished" in lines["done"] and "finished" in lines["lstm"]
    assert re.search(rf"diverged at step {diverged}\s+ckpt-2 ", lines["late"]), lines["late"]
    assert "step 4 of 8 (stopped)" in lines["half"]
    # Settings of one architecture: shared by the runs that use them, and said which.
    assert re.search(r"lstm_units 8 \(#4\)", " ".join(r.stdout.split())), r.stdout
    assert re.search(r"widths 8 \(#1, #2, #3\)", " ".join(r.stdout.split())), r.stdout
    assert "early" not in lines  # diverged before its first checkpoint (step 4):
    assert re.search(r"early: diverged at step [1-3] \(first non-finite layer: \w+\)", r.stdout)
    assert re.search(r"killed: stopped before its first checkpoint; run the same train.py "
                     r"command to train it", r.stdout)  # fmt: skip
    assert re.search(rf"live: training, no checkpoint yet \(pid {os.getpid()} ", r.stdout)
    assert "T-shirt/top" in r.stdout and "Ankle boot" in r.stdout  # full class names
    table = [line for line in r.stdout.splitlines() if not line.startswith("Not evaluated")]
    assert max(len(line) for line in table) <= 100

    # An earlier checkpoint's status is that checkpoint's, beside what became of the run.
    for name, checkpoint, status in (("done", "ckpt-4", "step 4 of 8 (run finished)"),
                                     ("late", "ckpt-2", f"step 2 of 8 (run diverged at step "
                                                        f"{diverged})")):  # fmt: skip
        (result,), failures = evaluate_runs([str(root / name)], checkpoint=checkpoint)
        assert (result.checkpoint, result.status) == (checkpoint, status), failures


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_the_status_describes_the_evaluated_checkpoint():
    finished, diverged = {"step": 80}, {"step": 30, "diverged_at_step": 37}
    assert checkpoint_status(80, 80, finished, training=False) == "finished"
    assert checkpoint_status(30, 80, finished, training=False) == "step 30 of 80 (run finished)"
    assert checkpoint_status(30, 80, diverged, training=False) == "diverged at step 37"
    assert (checkpoint_status(20, 80, diverged, training=False, latest=False)
            == "step 20 of 80 (run diverged at step 37)")  # fmt: skip
    assert checkpoint_status(30, 80, {}, training=True) == "step 30 of 80 (training)"
    assert checkpoint_status(30, 80, {}, training=False) == "step 30 of 80 (stopped)"


@pytest.mark.slow
def test_a_lock_names_a_live_holder_only(tmp_path):
    assert lock_holder(str(tmp_path)) is None  # no lock
    (tmp_path / "lock").write_text("")  # emptied by a clean exit
    assert lock_holder(str(tmp_path)) is None
    host = socket.gethostname()
    (tmp_path / "lock").write_text(json.dumps({"pid": _dead_pid(), "host": host}))
    assert lock_holder(str(tmp_path)) is None
    (tmp_path / "lock").write_text(json.dumps({"pid": os.getpid(), "host": host, "since": "t"}))
    assert lock_holder(str(tmp_path)) == f"pid {os.getpid()} on {host} since t"


def _result(dataset, classes, loss):
    config = Config(dataset=dataset)
    return RunResult(
        model_dir=f"/r/{dataset}", config=config, checkpoint="ckpt-1", step=1,
        test_accuracy=0.5, test_loss=loss, parameters=10,
        per_class_accuracy=[0.5] * len(classes), class_names=classes,
        predictions=np.zeros(4, np.int64),
    )  # fmt: skip


def test_lstm_units_is_a_column_only_when_lstm_runs_differ_in_it():
    cnn = _result("fashion_mnist", ("T-shirt/top", "Trouser"), 0.3)
    lstm = [dataclasses.replace(cnn, config=Config(arch="lstm", lstm_units=u)) for u in (8, 16)]
    header = next(line for line in Comparison([cnn, *lstm], {}).text().splitlines()
                  if line.startswith("#"))  # fmt: skip
    assert "lstm_units" in header.split() and "units" not in header.split()
    text = Comparison([cnn, lstm[0]], {}).text()
    assert "lstm_units" not in next(line for line in text.splitlines() if line.startswith("#"))
    assert "lstm_units 8 (#2)" in " ".join(text.split())
    assert "lstm_units" not in Comparison([cnn, cnn], {}).text()


def test_runs_on_different_data_sets_get_a_dataset_column_and_their_own_classes():
    fm = _result("fashion_mnist", ("T-shirt/top", "Trouser"), 0.31)
    cifar = dataclasses.replace(_result("cifar10", ("airplane", "automobile"), 4.9e34))
    text = Comparison([fm, cifar], {}).text()
    header = next(line for line in text.splitlines() if line.startswith("#"))
    assert "dataset" in header
    assert "Per-class test accuracy (%), fashion_mnist:" in text
    assert "Per-class test accuracy (%), cifar10:" in text and "automobile" in text
    assert "4.9e+34" in text and "0.3100" in text
