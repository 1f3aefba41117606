"""Bad input, each tried as a user would: one clear paragraph, an exit code, nothing modified."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.fixtures import ROOT, train_flags_in_process
from tests.fixtures import run_program as run

# Tests reading this module's fixture run on one worker (--dist loadgroup): it is made once.
pytestmark = pytest.mark.xdist_group("bad_input")

FAST = [
    "--batch_size=32",
    "--validation_size=64",
    "--widths=8",
    "--dense_units=16",
    "--checkpoint_every=4",
    "--log_every=4",
    "--eval_batch_size=64",
]


def snapshot(directory) -> dict:
    """Every file under directory with its content hash."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = hashlib.sha256(
                open(path, "rb").read()
            ).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, idx_dir):
    """One finished run (batch norm) every test may read but must not change."""
    model_dir = str(tmp_path_factory.mktemp("runs") / "batch")
    r = run(
        "train.py", f"--model_dir={model_dir}", f"--data_dir={idx_dir}", "--train_steps=8", *FAST
    )
    assert r.returncode == 0, r.stderr
    return model_dir


@pytest.mark.parametrize(
    "args,message",
    [
        (["--nrom=batch"], "Unknown command line flag 'nrom'"),
        (["--bn_momentum=1.5"], "momentum must be in [0, 1)"),
        (["--norm_eps=0"], "eps must be > 0"),
        (["--validation_size=-1"], "--validation_size must be >= 0"),
        (["--train_steps=0", "--epochs=0"], "--epochs must be > 0"),
        (["--eval_every=0"], "--eval_every must be >= 1"),
        (["--optimizer=rmsprop"], "value should be one of <sgd|adam>"),
    ],
)
def test_flag_errors(tmp_path, args, message):
    """train.py's flags parsed and validated in this process (tests.fixtures); the real
    program's exit 2 without a run directory: test_cli."""
    code, err = train_flags_in_process(f"--model_dir={tmp_path / 'run'}", *args)
    assert code == 2 and message in err, err


@pytest.mark.slow
def test_batch_larger_than_the_dataset_writes_nothing(tmp_path, idx_dir):
    r = run(
        "train.py",
        f"--model_dir={tmp_path / 'run'}",
        f"--data_dir={idx_dir}",
        "--batch_size=5000",
        "--validation_size=64",
    )
    assert r.returncode == 2 and "larger than the 256 training examples" in r.stderr
    assert not (tmp_path / "run").exists()


def _damaged_copy(idx_dir, tmp_path, damage):
    """A copy of the IDX data set with one kind of damage."""
    broken = tmp_path / "broken"
    shutil.copytree(idx_dir, broken)
    images = broken / "train-images-idx3-ubyte.gz"
    if damage == "truncate":
        import gzip

        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    elif damage == "magic":
        import gzip

        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(b"\x12\x34\x08\x03" + raw[4:]))
    elif damage == "garbage-gzip":
        images.write_bytes(images.read_bytes()[:20] + b"\x00garbage" * 50)
    else:  # labels for fewer examples than images
        labels = broken / "train-labels-idx1-ubyte"
        raw = labels.read_bytes()
        labels.write_bytes(raw[:4] + (100).to_bytes(4, "big") + raw[8:108])
    return broken


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", "truncated"),
        ("magic", "bad magic number"),
        ("garbage-gzip", "gzip"),
        ("labels-mismatch", "labels"),
    ],
)
def test_corrupt_idx_files(tmp_path, idx_dir, damage, message):
    """What train.py loads, loaded in this process: a DatasetError (train.py: exit 2) naming the
    damage; the real program: test_corrupt_idx_files_stop_train_py."""
    from normlab import data

    with pytest.raises(data.DatasetError, match=re.escape(message)):
        data.load("fashion_mnist", str(_damaged_copy(idx_dir, tmp_path, damage)), 64)


@pytest.mark.slow
def test_corrupt_idx_files_stop_train_py(tmp_path, idx_dir):
    r = run(
        "train.py",
        f"--model_dir={tmp_path / 'run'}",
        f"--data_dir={_damaged_copy(idx_dir, tmp_path, 'truncate')}",
        "--validation_size=64",
    )
    assert r.returncode == 2 and "truncated" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_unwritable_model_dir():
    r = run("train.py", "--model_dir=/proc/normlab-run", "--train_steps=1")
    assert r.returncode == 2 and "cannot create --model_dir=/proc/normlab-run" in r.stderr


@pytest.mark.slow
def test_resume_with_another_architecture_or_norm_changes_nothing(trained):
    before = snapshot(trained)
    for flag, message in (
        ("--arch=course", "--arch: default -> course"),
        ("--norm=weight", "--norm: batch -> weight"),
    ):
        r = run("train.py", f"--model_dir={trained}", flag)
        assert r.returncode == 2 and message in r.stderr, r.stderr
    assert snapshot(trained) == before


@pytest.mark.slow
def test_eval_checkpoint_of_another_model_and_corrupt_checkpoint(tmp_path, trained):
    before = snapshot(trained)
    root = tmp_path / "runs"
    root.mkdir()
    # A run whose flags say layer norm but whose checkpoints are batch norm's.
    other = root / "mislabelled"
    shutil.copytree(trained, other)
    flags = (other / "flags.txt").read_text().replace("--norm=batch", "--norm=layer")
    (other / "flags.txt").write_text(flags)
    # A run whose newest checkpoint's data file is damaged.
    corrupt = root / "corrupt"
    shutil.copytree(trained, corrupt)
    data_file = next((corrupt / "checkpoints").glob("ckpt-8.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    shutil.copytree(trained, root / "good")
    r = run("eval.py", f"--model_dirs={root}")
    assert r.returncode == 1, r.stderr
    assert re.search(r"Not evaluated: .*mislabelled: .*does not match this model", r.stdout)
    # The damaged newest checkpoint is skipped: the newest intact one is evaluated, and said so.
    assert re.search(r"^\d+ +corrupt .* ckpt-4 ", r.stdout, re.M), r.stdout
    assert re.search(r"corrupt: skipped ckpt-8: it does not restore", r.stderr)
    assert re.search(r"^\d+ +good ", r.stdout, re.M)  # the good run is still evaluated
    not_evaluated = [line for line in r.stdout.splitlines() if line.startswith("Not evaluated")]
    assert len(not_evaluated) == 1  # each failure reported once
    assert snapshot(trained) == before


@pytest.mark.slow
def test_eval_reads_a_run_while_it_trains(tmp_path, idx_dir):
    model_dir = tmp_path / "live"
    train = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            f"--model_dir={model_dir}",
            f"--data_dir={idx_dir}",
            "--train_steps=100000",
            "--checkpoint_every=2",
            "--log_every=1",
            "--validation_size=64",
            "--batch_size=16",
            "--widths=8",
            "--dense_units=16",
            "--eval_every=100000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((model_dir / "checkpoints").glob("*.index")):
            assert time.monotonic() < deadline and train.poll() is None
            time.sleep(0.2)
        # A second training on the live run is refused, naming the holder.
        r = run("train.py", f"--model_dir={model_dir}")
        assert r.returncode == 2 and f"in use by another training (pid {train.pid}" in r.stderr
        for _ in range(2):  # eval.py while checkpoints keep being written and rotated
            r = run("eval.py", f"--model_dirs={model_dir}")
            assert r.returncode == 0, r.stdout + r.stderr
            assert "live" in r.stdout
    finally:
        train.terminate()
        train.wait(timeout=120)
