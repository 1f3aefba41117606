"""Cutting TensorBoard event files back to a step, so a resumed run shows no step twice.

A run killed at step 37 whose last checkpoint is step 30 has already written summaries for
steps 31..37; the resumed run writes them again. TensorBoard would then show two values per
step (or a zig-zag). On resume the trainer rewrites each event directory keeping only the
records up to the resumed step.
"""

from __future__ import annotations

import os
import socket
import time

import tensorflow as tf

_TMP_PREFIX = ".rewrite-"  # no "tfevents" in the name: TensorBoard ignores it while written


def truncate_after(logdir: str, step: int) -> int:
    """Keeps only records with step <= `step` in logdir's event files; returns how many went.

    All event files of the directory are merged into one new file (written under a temporary
    name, then renamed), then the old files are deleted. Identical records are written once,
    so a rewrite interrupted between the rename and the deletions is repaired by the next.
    """
    if not os.path.isdir(logdir):
        return 0
    for name in os.listdir(logdir):
        if name.startswith(_TMP_PREFIX):
            os.remove(os.path.join(logdir, name))  # debris of an interrupted rewrite
    files = sorted(os.path.join(logdir, n) for n in os.listdir(logdir) if "tfevents" in n)
    if not files:
        return 0
    kept, seen, dropped = [], set(), 0
    for path in files:
        try:
            records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        except tf.errors.DataLossError:
            # The last record of a killed writer may be cut short: keep what is readable.
            records = _readable_prefix(path)
        for record in records:
            event = tf.compat.v1.Event.FromString(record)
            if event.step > step and event.HasField("summary"):
                dropped += 1
            elif record not in seen:
                seen.add(record)
                kept.append((event.wall_time, record))
    if dropped == 0 and len(files) == 1:
        return 0
    kept.sort(key=lambda item: item[0])
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.resumed"
    tmp = os.path.join(logdir, _TMP_PREFIX + name)
    with tf.io.TFRecordWriter(tmp) as writer:
        for _, record in kept:
            writer.write(record)
    os.replace(tmp, os.path.join(logdir, name))
    for path in files:
        os.remove(path)
    return dropped


def _readable_prefix(path: str) -> list[bytes]:
    records = []
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            records.append(record)
    except tf.errors.DataLossError:
        pass
    return records
