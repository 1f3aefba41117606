"""Concurrent use and interruptions: the model_dir lock, SIGTERM/SIGINT stop cleanly."""

import json
import os
import signal
import subprocess
import sys

import pytest

from normlab.trainer import lock
from normlab.trainer.config import Config
from normlab.trainer.errors import RunError
from normlab.trainer.trainer import Trainer
from tests.fixtures import tiny_splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from normlab.trainer import lock
lock.acquire({model_dir!r}, log=lambda _: None)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_live_lock_is_refused_and_a_dead_one_taken_over(tmp_path):
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK.format(root=ROOT, model_dir=model_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = Config(batch_size=32, train_steps=2, widths=(8,), dense_units=16)
        with pytest.raises(RunError, match=f"in use by another training \\(pid {holder.pid} "):
            Trainer(config, model_dir, splits=tiny_splits())
        assert not os.path.exists(os.path.join(model_dir, "flags.txt"))  # nothing written
        holder.send_signal(signal.SIGKILL)  # dies without releasing: the kernel drops flock
        holder.wait(timeout=30)
        lines = []
        Trainer(config, model_dir, splits=tiny_splits(), log=lines.append).close()
        assert any(
            f"from pid {holder.pid}" in line and "no longer running" in line for line in lines
        ), lines
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    lock.acquire(str(tmp_path), log=lambda _: None)
    lock.acquire(str(tmp_path), log=lambda _: None)
    lock.release(str(tmp_path))
    assert (tmp_path / "lock").read_text() == ""


FLAGS = [
    "--batch_size=16",
    "--validation_size=32",
    "--widths=8",
    "--dense_units=16",
    "--train_steps=400",
    "--log_every=1",
    "--eval_every=1000",
    "--checkpoint_every=1000",
    "--summary_every=1000",
    "--histogram_every=1000",
]
TRAIN = [sys.executable, os.path.join(ROOT, "train.py")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, idx_dir):
    """metrics.json of the run both signal tests are compared with, trained uninterrupted."""
    model_dir = tmp_path_factory.mktemp("straight") / "run"
    result = subprocess.run(
        TRAIN + [f"--model_dir={model_dir}", f"--data_dir={idx_dir}"] + FLAGS,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with open(model_dir / "metrics.json") as fh:
        return json.load(fh)


@pytest.mark.slow
@pytest.mark.xdist_group("reliability")  # one worker makes `straight` once for both
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(tmp_path, idx_dir, straight, sig):
    interrupted = str(tmp_path / "interrupted")
    proc = subprocess.Popen(
        TRAIN + [f"--model_dir={interrupted}", f"--data_dir={idx_dir}"] + FLAGS,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:  # wait until it is really training
        if line.startswith("step 20/"):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"{signal.Signals(sig).name} received: stopped at step" in err
    assert "Traceback" not in err
    saved = [
        n for n in os.listdir(os.path.join(interrupted, "checkpoints")) if n.endswith(".index")
    ]
    assert len(saved) == 1 and saved[0] != "ckpt-400.index"
    assert (tmp_path / "interrupted" / "lock").read_text() == ""  # released

    resumed = subprocess.run(
        TRAIN + [f"--model_dir={interrupted}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    a = json.load(open(os.path.join(interrupted, "metrics.json")))
    # Bitwise-equal weights give bitwise-equal test losses.
    assert a["test_loss"] == straight["test_loss"]
    assert a["test_accuracy"] == straight["test_accuracy"]
