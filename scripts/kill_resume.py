"""Kill-and-resume drill: SIGKILL train.py at random moments, restart it, check nothing is lost.

    python -m scripts.kill_resume --kills=25            # the full drill (a few minutes)
    python -m scripts.kill_resume --kills=6 --steps=240 # what CI runs (tests/test_kill_resume.py)

It trains a small model on synthetic IDX data: once uninterrupted, and once killed with SIGKILL
`--kills` times and restarted after each kill with the same command. The first kill lands as
training starts, before its first checkpoint (the restart must start again from step 0 by
itself); of the others, half land after a random number of training steps, half the instant
a checkpoint save is under way (a `*_temp` directory exists).
After every kill it checks that the checkpoint state names a complete checkpoint; at the end,
that the final weights are bitwise those of the uninterrupted run, at most --max_to_keep
checkpoints remain, no `*_temp` directory is left, and every training step appears once in
the summaries. Exit status 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(args, data_dir: str) -> list[str]:
    return [
        f"--data_dir={data_dir}",
        "--batch_size=16",
        "--validation_size=32",
        "--widths=8",
        "--dense_units=16",
        f"--train_steps={args.steps}",
        "--log_every=1",
        "--checkpoint_every=2",
        f"--max_to_keep={args.max_to_keep}",
        "--summary_every=1",
        "--eval_every=50",
        "--histogram_every=100000",
        f"--seed={args.seed}",
    ]


def _train(model_dir: str, flags: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--model_dir={model_dir}", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def _latest_recorded(checkpoint_dir: str) -> str | None:
    """The checkpoint the state file names, read as TensorFlow would (no TF import here)."""
    path = os.path.join(checkpoint_dir, "checkpoint")
    if not os.path.exists(path):
        return None
    for line in open(path):
        if line.startswith("model_checkpoint_path:"):
            return os.path.basename(line.split(":", 1)[1].strip().strip('"'))
    return None


def _complete(checkpoint_dir: str, name: str) -> bool:
    files = os.listdir(checkpoint_dir)
    return f"{name}.index" in files and any(f.startswith(f"{name}.data-") for f in files)


def _kill_once(
    model_dir: str, flags: list[str], how: str, rng: random.Random, timeout: float
) -> tuple[bool, bool]:
    """Starts training with `flags` and SIGKILLs it (`how`: "early", "random" or "mid-save");
    returns (killed: False if it finished first, whether it said it started again from 0).

    An early kill comes as the training starts (its "training ..." line; the first step has
    yet to be compiled), before its first checkpoint.
    A random kill comes after a random number of training steps (read from the progress
    lines, one per step), not after a random wall time, so it lands at any point of the run
    whatever the machine's load. A mid-save kill comes as soon as a checkpoint's temporary
    directory appears; the directory is polled every half millisecond (sleeping in between,
    so the poll does not take a core from the training it watches).
    """
    checkpoint_dir = os.path.join(model_dir, "checkpoints")
    proc = _train(model_dir, flags)
    deadline = time.monotonic() + timeout
    again = False
    try:
        steps_before_kill = 1 if how == "mid-save" else rng.randint(1, 6)
        for line in proc.stdout:  # wait until it has trained that many steps
            again = again or line.startswith("starting again from step 0")
            if how == "early" and line.startswith("training "):
                break
            if line.startswith("step "):
                steps_before_kill -= 1
                if steps_before_kill == 0:
                    break
        if proc.poll() is not None:
            return False, again
        if how != "mid-save":
            proc.send_signal(signal.SIGKILL)
            return True, again
        while proc.poll() is None and time.monotonic() < deadline:
            if os.path.isdir(checkpoint_dir) and any(
                "_temp" in n for n in os.listdir(checkpoint_dir)
            ):
                proc.send_signal(signal.SIGKILL)
                return True, again
            time.sleep(0.0005)
        return False, again
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def _variables(checkpoint_prefix: str) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(checkpoint_prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        # The model's state only: not the bookkeeping (save counter, training wall time).
        if "save_counter" not in name
        and "train_seconds" not in name
        and not name.startswith("_CHECKPOINTABLE")
    }


def _summary_steps(logdir: str) -> list[int]:
    from tensorboard.backend.event_processing import event_accumulator

    from normlab.trainer.summaries import LOSS

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return [e.step for e in acc.Tensors(LOSS)]


def run(args) -> dict:
    """The drill; returns its findings. `ok` says whether every check held."""
    from normlab.data.synthetic import write_idx_dataset

    work = args.workdir or tempfile.mkdtemp(prefix="normlab-kill-")
    data_dir = os.path.join(work, "data")
    write_idx_dataset(data_dir)
    flags = _flags(args, data_dir)
    rng = random.Random(args.seed)

    reference = os.path.join(work, "uninterrupted")
    proc = _train(reference, flags)
    out, _ = proc.communicate(timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{out}")

    model_dir = os.path.join(work, "killed")
    findings = {
        "kills": 0,
        "early_kills": 0,
        "mid_save_kills": 0,
        "random_kills": 0,
        "restarts": 0,
        "started_again_from_0": 0,
        "incomplete_checkpoint_selected": 0,
        "checkpoints_lost": 0,
    }
    problems = []
    while findings["kills"] < args.kills:
        k = findings["kills"]
        how = "early" if k == 0 else "mid-save" if k % 2 == 1 else "random"
        killed, again = _kill_once(model_dir, flags, how, rng, args.timeout)
        findings["restarts"] += 1
        findings["started_again_from_0"] += again
        if not killed:
            problems.append(f"training finished before kill {k + 1}: raise --steps")
            break
        findings["kills"] += 1
        findings[f"{how.replace('-', '_')}_kills"] += 1
        latest = _latest_recorded(os.path.join(model_dir, "checkpoints"))
        if how == "early" and latest is not None:
            problems.append(f"the early kill came after the first checkpoint ({latest})")
        if latest and not _complete(os.path.join(model_dir, "checkpoints"), latest):
            findings["incomplete_checkpoint_selected"] += 1
            problems.append(f"after kill {findings['kills']}: {latest} is recorded but incomplete")
        if args.verbose:
            print(
                f"kill {findings['kills']}/{args.kills} ({how}); latest checkpoint: {latest}",
                flush=True,
            )

    final = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--model_dir={model_dir}", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if final.returncode != 0:
        problems.append(f"the last restart failed:\n{final.stdout}\n{final.stderr}")
        findings["checkpoints_lost"] += 1
    else:
        checkpoint_dir = os.path.join(model_dir, "checkpoints")
        kept = sorted(n for n in os.listdir(checkpoint_dir) if n.endswith(".index"))
        temps = [n for n in os.listdir(checkpoint_dir) if "_temp" in n]
        findings["checkpoints_kept"] = len(kept)
        if len(kept) > args.max_to_keep:
            problems.append(f"{len(kept)} checkpoints kept, more than {args.max_to_keep}")
        if temps:
            problems.append(f"temporary directories left: {temps}")
        a = _variables(os.path.join(reference, "checkpoints", f"ckpt-{args.steps}"))
        b = _variables(os.path.join(checkpoint_dir, f"ckpt-{args.steps}"))
        differing = [k for k in a if k not in b or not (a[k] == b[k]).all()]
        findings["variables_compared"] = len(a)
        findings["final_weights_bitwise_equal"] = not differing and set(a) == set(b)
        if not findings["final_weights_bitwise_equal"]:
            problems.append(f"final weights differ from the uninterrupted run: {differing[:5]}")
        metrics = [json.load(open(os.path.join(d, "metrics.json"))) for d in (reference, model_dir)]
        if metrics[0]["test_loss"] != metrics[1]["test_loss"]:
            problems.append("test loss differs from the uninterrupted run")
        steps = _summary_steps(os.path.join(model_dir, "train"))
        if steps != list(range(1, args.steps + 1)):
            problems.append(
                f"summary steps are not 1..{args.steps} once each "
                f"({len(steps)} values, {len(set(steps))} distinct)"
            )
    findings["problems"] = problems
    findings["ok"] = not problems
    findings["workdir"] = work
    return findings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25, help="SIGKILLs to survive")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of the run")
    parser.add_argument("--max_to_keep", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per process")
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.steps < 4:
        parser.error("--kills must be >= 1 and --steps >= 4")
    started = time.monotonic()
    findings = run(args)
    findings["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(findings, indent=2))
    return 0 if findings["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
