"""eval.py over a directory of mixed runs: status, readable losses, full class names, a
dataset column when the runs differ."""

import dataclasses
import os
import re

import numpy as np

from normlab.trainer.config import Config
from normlab.trainer.evaluation import Comparison, RunResult
from tests.fixtures import run_program

SMALL = ("--batch_size=16", "--validation_size=64", "--eval_every=4", "--log_every=4",
         "--summary_every=4", "--checkpoint_every=4")  # fmt: skip
CNN = ("--widths=8", "--dense_units=16")


def test_eval_shows_each_runs_status_and_readable_losses(tmp_path, idx_dir):
    root = tmp_path / "runs"

    def train(name, *args):
        return run_program("train.py", f"--model_dir={root / name}", f"--data_dir={idx_dir}",
                           *SMALL, *args)  # fmt: skip

    assert train("done", "--train_steps=4", *CNN).returncode == 0
    assert train("lstm", "--train_steps=4", "--arch=lstm", "--lstm_units=8", "--norm=layer",
                 "--optimizer=adam", "--learning_rate=0.001").returncode == 0  # fmt: skip
    # Diverges after its first checkpoint (step 4) but before step 8.
    bad = train("bad", "--train_steps=8", *CNN, "--norm=none", "--learning_rate=3e4")
    assert bad.returncode == 1
    # Unfinished: 8 steps planned, killed after 4 (its run directory as a SIGKILL leaves it).
    assert train("half", "--train_steps=4", *CNN).returncode == 0
    flags = (root / "half" / "flags.txt").read_text().replace("--train_steps=4", "--train_steps=8")
    (root / "half" / "flags.txt").write_text(flags)
    os.remove(root / "half" / "metrics.json")
    r = run_program("eval.py", f"--model_dirs={root}")
    assert r.returncode == 1, r.stderr  # one run could not be evaluated
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line[:1].isdigit()}
    assert "finished" in lines["done"] and "finished" in lines["lstm"]
    assert "at 4 of 8" in lines["half"]
    assert "bad" not in lines  # diverged before its first checkpoint (step 4):
    assert re.search(r"bad: diverged at step [1-3] \(first non-finite layer: \w+\)", r.stdout)
    assert "T-shirt/top" in r.stdout and "Ankle boot" in r.stdout  # full class names
    table = [line for line in r.stdout.splitlines() if not line.startswith("Not evaluated")]
    assert max(len(line) for line in table) <= 100


def _result(dataset, classes, loss):
    config = Config(dataset=dataset)
    return RunResult(
        model_dir=f"/r/{dataset}", config=config, checkpoint="ckpt-1", step=1,
        test_accuracy=0.5, test_loss=loss, parameters=10,
        per_class_accuracy=[0.5] * len(classes), class_names=classes,
        predictions=np.zeros(4, np.int64),
    )  # fmt: skip


def test_runs_on_different_data_sets_get_a_dataset_column_and_their_own_classes():
    fm = _result("fashion_mnist", ("T-shirt/top", "Trouser"), 0.31)
    cifar = dataclasses.replace(_result("cifar10", ("airplane", "automobile"), 4.9e34))
    text = Comparison([fm, cifar], {}).text()
    header = next(line for line in text.splitlines() if line.startswith("#"))
    assert "dataset" in header
    assert "Per-class test accuracy (%), fashion_mnist:" in text
    assert "Per-class test accuracy (%), cifar10:" in text and "automobile" in text
    assert "4.9e+34" in text and "0.3100" in text
