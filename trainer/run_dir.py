"""A run directory: what it may be, its lock, flags file, start-up repair and metrics.json.

Layout (self-describing):
    flags.txt        the run's whole configuration, absl flagfile format
    checkpoints/     tf.train.CheckpointManager: step, model, optimizer, training time
    train/, eval/    TensorBoard event files (eval/: validation, and the final test metrics)
    events.*         the HParams record of this run (TensorBoard's HParams dashboard)
    metrics.json     final metrics, written when training completes
    lock             held while a training runs (pid, host, start time)
    earlier-attempts/N-why/   what an earlier attempt left, moved aside when this run started
                     again from step 0 (before-first-checkpoint: its summaries; start-over:
                     the whole earlier run, a run directory of its own)
    .worker-N/       multi_worker only: worker N's scratch checkpoints, deleted when it ends

The rules that keep what a user made safe: a path that is a file, or a directory holding other
runs, is refused before anything is created; a second training of the same run is refused
while the first holds the lock; metrics.json is only ever merged into, never rewritten with
fewer fields; every file is replaced atomically (a kill never leaves half a file); what an
earlier attempt left is moved aside, never deleted, and a finished or diverged run's results
without checkpoints are refused rather than trained over.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import tensorflow as tf

from normlab.trainer import checkpoints, events, lock
from normlab.trainer.config import FLAGS_FILE, Config, flags_path, is_run_dir
from normlab.trainer.errors import UsageError

METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
# Where earlier attempts are moved (never deleted): each in a numbered subdirectory, which
# TensorBoard shows as runs of their own, not mixed into this run's curves.
ASIDE_DIR = "earlier-attempts"
HPARAMS_PREFIX = "events.out.tfevents."  # model_dir's own event files: the HParams record
FINAL_RESULT = "test_accuracy"  # in metrics.json only once a run has finished


def write_atomically(path: str, text: str) -> None:
    """Writes via a temporary file and a rename, so a kill never leaves a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def runs_below(path: str) -> list[str]:
    """The run directories directly inside `path` (subdirectories with a flags file)."""
    if not os.path.isdir(path):
        return []
    children = sorted(os.path.join(path, name) for name in os.listdir(path))
    return [c for c in children if os.path.isdir(c) and is_run_dir(c)]


def check_model_dir(model_dir: str) -> None:
    """Raises UsageError if `model_dir` cannot be a run directory; creates nothing."""
    if not model_dir:
        raise UsageError(
            "--model_dir is required: the directory that holds the run's flags, checkpoints, "
            "summaries and metrics."
        )
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UsageError(
            f"--model_dir={model_dir} is a file, not a directory. Choose another path."
        )
    if not is_run_dir(model_dir):
        children = runs_below(model_dir)
        if children:
            names = ", ".join(os.path.basename(c) for c in children[:3])
            more = f" and {len(children) - 3} more" if len(children) > 3 else ""
            raise UsageError(
                f"--model_dir={model_dir} holds other runs ({names}{more}): it is a directory "
                "of runs, not a run. Give a new subdirectory for this run, e.g. "
                f"--model_dir={os.path.join(model_dir, 'my-run')}."
            )


class RunDirectory:
    """One run directory, opened by a training (writes=True) or read by an evaluation.

    Args:
        path: the directory.
        writes: this process writes it (the chief of a training). Others create nothing in it,
            except a non-chief worker's scratch checkpoints (`scratch_checkpoint_dir`).
        log: where repair messages go.
        must_exist: an evaluation: the directory must already be there.
    """

    def __init__(
        self,
        path: str,
        *,
        writes: bool,
        log: Callable[[str], None] = print,
        must_exist: bool = False,
    ):
        self.path = path
        self.writes = writes
        self.log = log
        self.must_exist = must_exist
        self._locked = False

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.path, CHECKPOINT_DIR)

    def scratch_checkpoint_dir(self, worker: int | None) -> str:
        """Where a non-chief worker saves (its saves are required by the collective protocol
        but must not replace the chief's); emptied now, deleted at the end."""
        path = os.path.join(self.path, f".worker-{worker}")
        shutil.rmtree(path, ignore_errors=True)
        return path

    def open(self) -> None:
        """Creates the directory and takes its lock (a writer), after check_model_dir."""
        check_model_dir(self.path)
        if not self.writes:
            if self.must_exist and not os.path.isdir(self.path):
                raise UsageError(f"{self.path} is not a directory")
            return
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --model_dir={self.path}: {e.strerror}.") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UsageError(
                f"--model_dir={self.path} is not writable. Choose a directory you can write to."
            )
        lock.acquire(self.path, self.log)
        self._locked = True

    def close(self) -> None:
        """Releases the lock (a writer)."""
        if self._locked:
            lock.release(self.path)
            self._locked = False

    # -- flags -------------------------------------------------------------------------------

    def saved_config(self) -> Config | None:
        path = flags_path(self.path)
        return Config.from_flagfile(path) if os.path.isfile(path) else None

    def has_checkpoint(self) -> bool:
        return tf.train.latest_checkpoint(self.checkpoint_dir) is not None

    def check_config(self, config: Config) -> None:
        """Refuses settings that differ from a saved run's experiment (its checkpoints were
        made by the saved ones); bookkeeping flags may change."""
        saved = self.saved_config()
        if saved is None:
            return
        conflicts = saved.differences(config)
        if conflicts and self.has_checkpoint():
            raise UsageError(
                f"{self.path} holds a run with other settings; resuming it with these would mix "
                f"two experiments: {'; '.join(conflicts)}. Resume with the saved flags "
                f"(train.py --model_dir={self.path} alone reuses them) or choose a new "
                "--model_dir."
            )

    def save_config(self, config: Config) -> None:
        """Writes flags.txt (as training starts: a run refused before keeps its own)."""
        if not self.writes:
            return
        saved = self.saved_config()
        if saved is not None and saved.differences(config):
            self.log(f"replacing the flags of {self.path}: it has no checkpoint yet")
        write_atomically(flags_path(self.path), config.to_flagfile())

    # -- start-up repair ---------------------------------------------------------------------

    def repair_checkpoints(self, max_to_keep: int) -> None:
        """Removes what a killed save left behind (trainer/checkpoints.py)."""
        if not self.writes:
            return
        for name in checkpoints.remove_temporary(self.checkpoint_dir):
            self.log(f"removed {name}: a checkpoint whose save was interrupted")
        for name in checkpoints.remove_unlisted_and_excess(self.checkpoint_dir, max_to_keep):
            self.log(f"removed {name}: not (or no longer) listed as a kept checkpoint")

    def start_from_step_0(self) -> None:
        """A run about to start at step 0 (no checkpoint to resume from) in this directory.

        Results are never replaced: metrics.json with a finished run's results (its
        checkpoints are gone) or with a divergence is refused (UsageError), nothing touched.
        What an attempt stopped before its first checkpoint left (summaries, a metrics.json
        without results) is moved into earlier-attempts/, out of the new run's curves."""
        from normlab.trainer.summaries import EVAL_DIR, TRAIN_DIR

        if not self.writes:
            return
        metrics = self.read_metrics()
        again = (
            "Nothing was changed. Use a new --model_dir, or --start_over to train it again "
            f"from step 0 (the earlier run is moved into {self.path}/{ASIDE_DIR}/, kept)."
        )
        if "diverged_at_step" in metrics:
            raise UsageError(
                f"{self.path} holds a run that diverged at step {metrics['diverged_at_step']} "
                "(metrics.json) and no checkpoint to resume from. "
                f"{again} A lower --learning_rate or a normalization may help."
            )
        if FINAL_RESULT in metrics:
            raise UsageError(
                f"{self.path} holds a finished run ({describe_results(metrics)}) whose "
                f"checkpoints are gone, so it cannot be resumed. {again}"
            )
        earlier = is_run_dir(self.path)  # its flags.txt: an attempt has started training
        moved = self.set_aside((TRAIN_DIR, EVAL_DIR, METRICS_FILE), "before-first-checkpoint")
        if earlier or moved:
            self.log(
                "starting again from step 0: the earlier attempt stopped before its first "
                "checkpoint"
                + (f" (what it left, {', '.join(moved[1])}, moved to {moved[0]})" if moved else "")
            )

    def start_over(self) -> None:
        """--start_over: moves the earlier run (checkpoints, summaries, metrics.json, HParams
        record, flags.txt) into earlier-attempts/N-start-over/, where it stays a complete run
        directory (eval.py and TensorBoard read it), so training starts at 0."""
        from normlab.trainer.summaries import EVAL_DIR, TRAIN_DIR

        if not self.writes:
            return
        records = [n for n in os.listdir(self.path) if n.startswith(HPARAMS_PREFIX)]
        moved = self.set_aside(
            (CHECKPOINT_DIR, TRAIN_DIR, EVAL_DIR, METRICS_FILE, FLAGS_FILE, *records), "start-over"
        )
        if moved:
            self.log(f"starting over from step 0: the earlier run moved to {moved[0]}")

    def set_aside(self, names: tuple[str, ...], label: str) -> tuple[str, list[str]] | None:
        """Moves those of `names` that exist into a new earlier-attempts/N-label/ directory;
        returns (it, the names moved), None if none exists."""
        present = [n for n in names if os.path.exists(os.path.join(self.path, n))]
        if not present:
            return None
        parent = os.path.join(self.path, ASIDE_DIR)
        os.makedirs(parent, exist_ok=True)
        n = len(os.listdir(parent)) + 1
        while any(e.startswith(f"{n}-") for e in os.listdir(parent)):
            n += 1
        target = os.path.join(parent, f"{n}-{label}")
        os.makedirs(target)
        for name in present:
            os.replace(os.path.join(self.path, name), os.path.join(target, name))
        return target, [n + "/" if os.path.isdir(os.path.join(target, n)) else n for n in present]

    def remove_hparams_record(self) -> None:
        """Deletes the HParams event files of earlier attempts (model_dir's own events.*, which
        hold nothing else), so the dashboard shows the settings that produced the metrics."""
        if not self.writes:
            return
        for name in os.listdir(self.path):
            if name.startswith(HPARAMS_PREFIX) and os.path.isfile(
                os.path.join(self.path, name)
            ):
                os.remove(os.path.join(self.path, name))

    def truncate_summaries(self, step: int) -> None:
        """Drops summaries written after `step` by an interrupted run, so TensorBoard shows
        each step once when training resumes from `step`."""
        if not self.writes:
            return
        from normlab.trainer.summaries import EVAL_DIR, TRAIN_DIR

        for sub in (TRAIN_DIR, EVAL_DIR):
            dropped = events.truncate_after(os.path.join(self.path, sub), step)
            if dropped:
                self.log(
                    f"dropped {dropped} {sub} summaries written after step {step} by the "
                    "interrupted run"
                )

    # -- metrics.json ------------------------------------------------------------------------

    def results(self) -> str:
        """A finished run's results from metrics.json, for a message ('' if it has none)."""
        metrics = self.read_metrics()
        return describe_results(metrics) if FINAL_RESULT in metrics else ""

    def read_metrics(self) -> dict:
        path = os.path.join(self.path, METRICS_FILE)
        try:
            with open(path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def write_metrics(self, updates: dict) -> dict:
        """Merges `updates` into metrics.json (fields not in `updates` are kept); returns it."""
        merged = {**self.read_metrics(), **updates}
        if self.writes:
            write_atomically(
                os.path.join(self.path, METRICS_FILE), json.dumps(merged, indent=2) + "\n"
            )
        return merged


def describe_results(metrics: dict) -> str:
    """'test accuracy 0.9181, test loss 0.2345' from metrics.json's fields."""
    out = []
    for key, name in ((FINAL_RESULT, "test accuracy"), ("test_loss", "test loss")):
        if isinstance(metrics.get(key), (int, float)):
            out.append(f"{name} {metrics[key]:.4f}")
    return ", ".join(out) or "no test results"
