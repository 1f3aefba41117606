"""train.py under tf.distribute: 2 replicas (logical CPUs) and 2 worker processes on loopback.

The distributed runs are real train.py processes (logical devices and a worker's server must
exist before TensorFlow's runtime starts); the one-device run they are compared with, eval's
reading of their checkpoints and the TF_CONFIG check run in this process.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from normlab.trainer import cli, distribute, evaluation
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer
from tests.fixtures import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--batch_size=32",
    "--validation_size=64",
    "--widths=8",
    "--dense_units=16",
    "--train_steps=12",
    "--log_every=6",
    "--eval_every=100",
    "--checkpoint_every=6",
    "--lr_schedule=constant",
]
# The tests using `one_device` run on one worker, which makes it once.
pytestmark = pytest.mark.xdist_group("distributed_trainer")


def train(model_dir, *args, env=None, wait=True):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--model_dir={model_dir}", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def weights(model_dir, step=12):
    """The checkpoint's training state: model, optimizer, step (not the save counter or the
    run's wall-clock training time)."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if "save_counter" not in k
        and "train_seconds" not in k
        and not k.startswith("_CHECKPOINTABLE")
    }


def max_diff(a, b):
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, idx_dir):
    """FLAGS' run on one device, trained in this process by the Trainer train.py drives (the
    runs compared with it are real train.py processes)."""
    model_dir = str(tmp_path_factory.mktemp("runs") / "default")
    config = Config(
        data_dir=idx_dir,
        batch_size=32,
        validation_size=64,
        widths=(8,),
        dense_units=16,
        train_steps=12,
        log_every=6,
        eval_every=100,
        checkpoint_every=6,
        lr_schedule="constant",
    )
    trainer = Trainer(config, model_dir, log=lambda _: None)
    try:
        trainer.train_and_evaluate()
    finally:
        trainer.close()
    return model_dir


def evaluated_step(model_dir) -> int:
    """The step of the checkpoint eval.py's library evaluates in `model_dir` (it must load)."""
    results, failures = evaluation.evaluate_runs([model_dir])
    assert not failures and len(results) == 1, failures
    return results[0].step


@pytest.mark.slow
def test_two_replicas_equal_one_device_and_resume(tmp_path, idx_dir, one_device):
    mirrored = str(tmp_path / "mirrored")
    rc, out, err = train(
        mirrored, f"--data_dir={idx_dir}", "--strategy=mirrored", "--virtual_cpus=2", *FLAGS
    )
    assert rc == 0, err
    assert "2 replicas (MirroredStrategy on CPU:0, CPU:1)" in out
    assert "global batch 32: 16 examples per replica" in out
    # Synchronized BN over 2 x 16 examples is BN over the 32: the same training, up to
    # float32 rounding of the split sums (measured: ~1e-6 after 12 steps).
    assert max_diff(weights(one_device), weights(mirrored)) < 1e-5

    # Resumed on 2 replicas (stopped after 6 steps) = uninterrupted on 2 replicas.
    resumed = str(tmp_path / "resumed")
    short = [f for f in FLAGS if not f.startswith("--train_steps")] + ["--train_steps=6"]
    rc, _, err = train(
        resumed, f"--data_dir={idx_dir}", "--strategy=mirrored", "--virtual_cpus=2", *short
    )
    assert rc == 0, err
    rc, out, err = train(resumed, "--train_steps=12")
    assert rc == 0 and "resumed from" in out, err
    assert max_diff(weights(mirrored), weights(resumed)) == 0.0


@pytest.mark.slow
def test_unsynchronized_batch_norm_trains_differently(tmp_path, idx_dir, one_device):
    unsynced = str(tmp_path / "unsynced")
    rc, _, err = train(
        unsynced,
        f"--data_dir={idx_dir}",
        "--strategy=mirrored",
        "--virtual_cpus=2",
        "--sync_batch_norm=false",
        *FLAGS,
    )
    assert rc == 0, err
    assert max_diff(weights(one_device), weights(unsynced)) > 1e-4


def test_multi_worker_needs_tf_config(monkeypatch, capsys):
    """Without TF_CONFIG, --strategy=multi_worker is a usage error (train.py exits 2)."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = cli.run_main(lambda: distribute.make_strategy("multi_worker"), "train.py")
    err = capsys.readouterr().err
    assert code == 2 and "needs the TF_CONFIG environment variable" in err, err


def _workers(model_dir, idx_dir, extra=(), steps=12):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    flags = [f for f in FLAGS if not f.startswith("--train_steps")] + [f"--train_steps={steps}"]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(
            train(
                model_dir,
                f"--data_dir={idx_dir}",
                "--strategy=multi_worker",
                "--collective_timeout=30",
                *flags,
                *extra,
                env={"TF_CONFIG": tf_config},
                wait=False,
            )
        )
    return procs


@pytest.mark.slow
def test_two_workers_train_like_one_device_and_the_chief_writes(tmp_path, idx_dir, one_device):
    model_dir = str(tmp_path / "mw")
    procs = _workers(model_dir, idx_dir)
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert max_diff(weights(one_device), weights(model_dir)) < 1e-5
    assert sorted(os.listdir(model_dir)) == sorted(
        n for n in os.listdir(model_dir) if not n.startswith(".worker")
    )  # scratch removed
    assert json.load(open(os.path.join(model_dir, "metrics.json")))["step"] == 12
    assert evaluated_step(model_dir) == 12


@pytest.mark.slow
def test_a_killed_worker_stops_the_chief_cleanly(tmp_path, idx_dir):
    model_dir = str(tmp_path / "mw")
    chief, worker = _workers(
        model_dir, idx_dir, extra=["--log_every=1", "--checkpoint_every=2"], steps=100000
    )
    try:
        for line in chief.stdout:
            if line.startswith("step 10/"):
                break
        worker.send_signal(signal.SIGKILL)
        started = time.monotonic()
        out, err = chief.communicate(timeout=240)
        assert chief.returncode == 1, err
        assert "lost contact with another worker" in err and "Traceback" not in err
        assert time.monotonic() - started < 200
    finally:
        for p in (chief, worker):
            p.kill()
            p.wait()
    # The chief's checkpoints are complete and usable.
    assert evaluated_step(model_dir) >= 2
