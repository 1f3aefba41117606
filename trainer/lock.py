"""An exclusive lock on a model_dir, so two trainings never write the same run.

The lock is an flock(2) on model_dir/lock, which the kernel releases when its holder dies,
even by SIGKILL; the file also records the holder's pid, host and start time, so a refused
user is told who holds it, and a taken-over lock says whose it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from normlab.trainer.errors import InUse

LOCK_FILE = "lock"

# Locks this process holds, by path: a second Trainer on the same run in the same process
# (tests, notebooks) shares the lock instead of deadlocking on itself.
_held: dict[str, int] = {}


def check_free(model_dir: str) -> None:
    """Raises InUse (exit 2) if another process holds model_dir's lock; takes nothing. A
    program calls it first, before the seconds of loading data and building the model."""
    path = os.path.realpath(os.path.join(model_dir, LOCK_FILE))
    if path in _held or not os.path.isfile(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a holder has LOCK_EX
    except BlockingIOError:
        raise _in_use(model_dir, fd) from None
    finally:
        os.close(fd)  # also drops the shared lock


def acquire(model_dir: str, log=print) -> None:
    """Takes model_dir's lock, or raises InUse (exit 2) naming the live holder."""
    path = os.path.realpath(os.path.join(model_dir, LOCK_FILE))
    if path in _held:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _in_use(model_dir, fd)
        os.close(fd)
        raise error from None
    previous = _read(fd)
    if previous:
        log(
            f"took over the lock of {model_dir} from {_describe(previous)}, which is no longer "
            "running"
        )
    os.ftruncate(fd, 0)
    os.pwrite(
        fd,
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        ).encode(),
        0,
    )
    _held[path] = fd


def release(model_dir: str) -> None:
    """Releases the lock (empties the file: a clean exit leaves nothing to take over)."""
    path = os.path.realpath(os.path.join(model_dir, LOCK_FILE))
    fd = _held.pop(path, None)
    if fd is not None:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _in_use(model_dir: str, fd: int) -> InUse:
    return InUse(
        f"{model_dir} is in use by another training ({_describe(_read(fd))}). Nothing was "
        "done. Wait for it to finish, stop it, or choose another --model_dir."
    )


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "since": "unreadable lock file"}


def _describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"
    )
