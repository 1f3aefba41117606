"""A damaged newest checkpoint: train.py resumes from the newest intact one and keeps the
damaged files aside; eval.py evaluates the newest intact one or exactly the one named."""

import os

from tests.fixtures import run_program

FAST = ("--eval_every=4", "--log_every=4", "--summary_every=4", "--eval_batch_size=64")


def _train(model_dir, idx_dir, steps):
    return run_program(
        "train.py", f"--model_dir={model_dir}", f"--data_dir={idx_dir}",
        f"--train_steps={steps}", "--checkpoint_every=4", "--batch_size=16", "--widths=8",
        "--dense_units=16", "--validation_size=64", *FAST,
    )  # fmt: skip


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


def test_a_run_with_results_but_no_checkpoint_is_refused_until_start_over(tmp_path, idx_dir):
    model_dir = tmp_path / "x"
    assert _train(model_dir, idx_dir, 4).returncode == 0
    for name in os.listdir(model_dir / "checkpoints"):
        os.remove(model_dir / "checkpoints" / name)
    before = {p: os.path.getmtime(p) for p in (model_dir / "metrics.json", model_dir / "train")}
    again = _train(model_dir, idx_dir, 4)
    assert again.returncode == 2 and "no checkpoint" in again.stderr
    assert "--start_over" in again.stderr and "Traceback" not in again.stderr
    assert {p: os.path.getmtime(p) for p in before} == before  # nothing touched
    over = run_program(
        "train.py", f"--model_dir={model_dir}", "--start_over", f"--data_dir={idx_dir}"
    )
    assert over.returncode == 0, over.stderr
    assert "starting over" in over.stdout + over.stderr
