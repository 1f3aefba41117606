"""Checkpoints: restoring one (also of a run another process is training), and the start-up
repairs of a checkpoint directory after a training process was killed.

tf.train.CheckpointManager writes a checkpoint's files under a `*_temp` name, renames them,
then records the checkpoint in the `checkpoint` state file and deletes the oldest beyond
max_to_keep. A kill can stop it between any two of these, leaving (measured with TF 2.21):
  * `ckpt-N_temp/` directories, never cleaned up;
  * complete `ckpt-N.*` files the state file does not list (killed before recording them);
  * more recorded checkpoints than max_to_keep (killed between recording and deleting).
The state file itself always names a complete checkpoint, so resuming from it is safe; these
functions remove the debris so the directory again holds exactly what the manager lists.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import tensorflow as tf

from normlab.trainer.errors import RunError

_CHECKPOINT_FILE = re.compile(r"^(?P<prefix>ckpt-\d+)\.(index|data-\d{5}-of-\d{5})$")


def remove_temporary(checkpoint_dir: str) -> list[str]:
    """Deletes the `*_temp*` directories an interrupted save leaves; returns their names."""
    removed = []
    if os.path.isdir(checkpoint_dir):
        for name in sorted(os.listdir(checkpoint_dir)):
            path = os.path.join(checkpoint_dir, name)
            if "_temp" in name and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
    return removed


def remove_unlisted_and_excess(checkpoint_dir: str, max_to_keep: int) -> list[str]:
    """Deletes checkpoints the state file does not list, and the oldest beyond max_to_keep.

    Call it before creating the CheckpointManager, which then reads the tidied state. Returns
    the checkpoint prefixes removed; the latest checkpoint is never removed.
    """
    if not os.path.isdir(checkpoint_dir):
        return []
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    listed = list(state.all_model_checkpoint_paths) if state else []
    if state and state.model_checkpoint_path not in listed:
        listed.append(state.model_checkpoint_path)
    keep = listed[-max_to_keep:]
    keep_names = {os.path.basename(p) for p in keep}
    removed = []
    for name in sorted(os.listdir(checkpoint_dir)):
        match = _CHECKPOINT_FILE.match(name)
        if match and match.group("prefix") not in keep_names:
            os.remove(os.path.join(checkpoint_dir, name))
            if match.group("prefix") not in removed:
                removed.append(match.group("prefix"))
    if len(keep) < len(listed):
        # The state must list only what is left. Its timestamps go along: the manager only
        # manages (and later rotates out) checkpoints that have one.
        stamps = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
        tf.compat.v1.train.update_checkpoint_state(
            checkpoint_dir,
            state.model_checkpoint_path,
            all_model_checkpoint_paths=keep,
            all_model_checkpoint_timestamps=[stamps[p] for p in keep if p in stamps] or None,
            last_preserved_timestamp=state.last_preserved_timestamp,
        )
    return removed


def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores every object of `checkpoint` from `path`, or raises RunError saying what to do.

    assert_consumed, not assert_existing_objects_matched: a batch-norm checkpoint holds every
    variable a layer-norm model has (gamma, beta, kernels) plus moving statistics, and would
    otherwise restore "successfully" into the wrong model.
    """
    try:
        checkpoint.restore(path).assert_consumed()
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (OpError,
        # AssertionError, ValueError, IndexError "read less bytes than requested", ...)
        cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        error = RunError(
            f"cannot restore {path}: it is damaged or does not match this model ({cause}). "
            "Was it written by another architecture or norm? Use a new --model_dir."
        )
        error.cause = cause
        raise error from None


def _listed(checkpoint_dir: str) -> list[str]:
    """The checkpoints the state file lists, newest first."""
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    if not state:
        return []
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    return [p if os.path.isabs(p) else os.path.join(checkpoint_dir, p) for p in reversed(paths)]


def restore_newest(
    checkpoint: tf.train.Checkpoint, checkpoint_dir: str, log=lambda _: None
) -> str | None:
    """Restores the newest checkpoint that restores, of a run that another process may be
    training (nothing is written); returns its path (None: there is none yet).

    That process deletes its oldest checkpoint each time it saves one, so with frequent saves
    the checkpoint that was newest when this one looked may be gone when it reads: then it
    looks again. A newest checkpoint that is there and fails is damaged: the next older
    intact one is restored and `log` says which was skipped and why. If none restores, the
    error of the newest is raised (checkpoints of another model fail alike).
    """
    path = tf.train.latest_checkpoint(checkpoint_dir)
    while path is not None:  # each retry needs a newer checkpoint, so this ends
        try:
            restore(checkpoint, path)
            return path
        except RunError as error:
            time.sleep(0.1)
            newest = tf.train.latest_checkpoint(checkpoint_dir)
            if newest == path:
                return _older_intact(checkpoint, checkpoint_dir, path, error, log)
            path = newest
    return None


def _older_intact(checkpoint, checkpoint_dir, damaged: str, error: RunError, log) -> str:
    older = [p for p in _listed(checkpoint_dir) if p != damaged]
    for path in older:
        try:
            restore(checkpoint, path)
        except RunError:
            continue
        log(
            f"skipped {os.path.basename(damaged)}: it does not restore ({error.cause}); using "
            f"{os.path.basename(path)}, the newest intact checkpoint"
        )
        return path
    raise error


def set_aside_damaged(checkpoint_dir: str, restored: str, log) -> list[str]:
    """After restoring `restored`, moves the files of every newer listed checkpoint (they
    failed to restore) into checkpoints/damaged/, kept, not deleted, and lists only the
    intact ones in the state file, so training resumes from `restored` and saves past them."""
    listed = _listed(checkpoint_dir)
    newer = listed[: listed.index(restored)] if restored in listed else []
    if not newer:
        return []
    aside = os.path.join(checkpoint_dir, "damaged")
    os.makedirs(aside, exist_ok=True)
    for path in newer:
        prefix = os.path.basename(path)
        for name in os.listdir(checkpoint_dir):
            if name.startswith(prefix + "."):
                os.replace(os.path.join(checkpoint_dir, name), os.path.join(aside, name))
        log(f"moved the damaged {prefix} to {aside}/ (kept; resuming from "
            f"{os.path.basename(restored)})")  # fmt: skip
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    keep = [
        p
        for p in state.all_model_checkpoint_paths
        if os.path.join(checkpoint_dir, os.path.basename(p)) not in newer
    ]
    stamps = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
    tf.compat.v1.train.update_checkpoint_state(
        checkpoint_dir,
        restored,
        all_model_checkpoint_paths=keep,
        all_model_checkpoint_timestamps=[stamps[p] for p in keep if p in stamps] or None,
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    return [os.path.basename(p) for p in newer]
