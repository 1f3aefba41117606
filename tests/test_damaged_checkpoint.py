"""A damaged newest checkpoint: train.py resumes from the newest intact one and keeps the
damaged files aside; eval.py evaluates the newest intact one or exactly the one named."""

import os

import pytest

from tests.fixtures import run_program

FAST = ("--eval_every=4", "--log_every=4", "--summary_every=4", "--eval_batch_size=64")


def _train(model_dir, idx_dir, steps):
    return run_program(
        "train.py", f"--model_dir={model_dir}", f"--data_dir={idx_dir}",
        f"--train_steps={steps}", "--checkpoint_every=4", "--batch_size=16", "--widths=8",
        "--dense_units=16", "--validation_size=64", *FAST,
    )  # fmt: skip


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_and_kept(tmp_path, idx_dir):
    model_dir = tmp_path / "x"
    assert _train(model_dir, idx_dir, 8).returncode == 0
    ckpts = model_dir / "checkpoints"
    data = next(f for f in os.listdir(ckpts) if f.startswith("ckpt-8.data"))
    os.truncate(ckpts / data, 100)

    named = run_program("eval.py", f"--model_dirs={model_dir}", "--checkpoint=ckpt-4")
    assert named.returncode == 0, named.stderr
    assert "ckpt-4" in named.stdout and "skipped" not in named.stderr

    newest = run_program("eval.py", f"--model_dirs={model_dir}")
    assert newest.returncode == 0, newest.stderr
    assert "skipped ckpt-8" in newest.stderr and "ckpt-4" in newest.stdout
    assert os.path.getsize(ckpts / data) == 100  # eval.py writes nothing

    resumed = _train(model_dir, idx_dir, 12)
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout + resumed.stderr
    assert "skipped ckpt-8" in out and "resumed from" in out and "ckpt-4 at step 4" in out
    assert os.path.getsize(ckpts / "damaged" / data) == 100  # kept, not deleted
    assert os.path.exists(ckpts / "ckpt-12.index")


@pytest.mark.slow
def test_a_finished_run_without_checkpoints_is_refused_until_start_over(tmp_path, idx_dir):
    """Results exist (metrics.json of a finished run) but nothing to resume from: refused,
    nothing touched; --start_over moves the earlier run aside (kept) and trains again."""
    model_dir = tmp_path / "x"
    assert _train(model_dir, idx_dir, 4).returncode == 0
    for name in os.listdir(model_dir / "checkpoints"):
        os.remove(model_dir / "checkpoints" / name)
    metrics = (model_dir / "metrics.json").read_text()
    before = {p: os.path.getmtime(p) for p in (model_dir / "metrics.json", model_dir / "train")}
    again = _train(model_dir, idx_dir, 4)
    assert again.returncode == 2, again.stderr
    assert "holds a finished run (test accuracy" in again.stderr
    assert "checkpoints are gone" in again.stderr and "--start_over" in again.stderr
    assert {p: os.path.getmtime(p) for p in before} == before  # nothing touched
    over = run_program(
        "train.py", f"--model_dir={model_dir}", "--start_over", f"--data_dir={idx_dir}"
    )
    assert over.returncode == 0, over.stderr
    aside = model_dir / "earlier-attempts" / "1-start-over"
    assert f"starting over from step 0: the earlier run moved to {aside}" in over.stdout
    assert (aside / "metrics.json").read_text() == metrics  # kept, byte for byte
    assert (aside / "train").is_dir() and (aside / "flags.txt").is_file()
    assert (model_dir / "checkpoints" / "ckpt-4.index").exists()
