"""The training loop: one compiled step per batch, and the periodic actions between steps.

Each step, in order: take the batch, run the step (collecting summaries or histograms when
due), stop on a non-finite loss, write the step's summaries, log, validate, checkpoint, and
stop after saving if SIGINT/SIGTERM arrived. Histograms are due at the first and the last
step of a run and every `histogram_every` steps, so even a short run has some.

Training time counts only the steps: validation and saving are excluded, and the total over
every segment of a run (a resumed run continues the count) is kept in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable, Iterator

import tensorflow as tf

from normlab.trainer import steps as steps_lib
from normlab.trainer import summaries as tags
from normlab.trainer.config import Config
from normlab.trainer.errors import Interrupted, RunError
from normlab.trainer.signals import StopOnSignals

# What a lost worker looks like to the chief under MultiWorkerMirroredStrategy.
_LOST_WORKER = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@dataclasses.dataclass
class Hooks:
    """What the loop calls between steps.

    Attributes:
        validate: validates at a step (and writes its summaries); returns the results.
        save: saves a checkpoint at a step; returns its path.
        diagnose: called on a non-finite step; raises NonFiniteError naming the layer.
        log: progress lines.
    """

    validate: Callable[[int], dict]
    save: Callable[[int], str]
    diagnose: Callable[[int, tf.Tensor, dict], None]
    log: Callable[[str], None]


def collect_level(done: int, total: int, config: Config) -> int:
    """What step `done` (1-based) collects: histograms (and scalars) at the first and the last
    step and every histogram_every steps, scalars every summary_every steps."""
    if done == 1 or done == total or done % config.histogram_every == 0:
        return steps_lib.HISTOGRAMS
    if done % config.summary_every == 0:
        return steps_lib.SCALARS
    return steps_lib.NOTHING


def train_loop(
    train_step: steps_lib.TrainStep,
    batches: Iterator,
    *,
    start: int,
    total: int,
    config: Config,
    writer,
    train_seconds: tf.Variable,
    hooks: Hooks,
    stop: StopOnSignals,
    several_workers: bool,
) -> dict:
    """Steps `start` -> `total`; returns the last logging window's training metrics.

    `train_seconds` (checkpointed) holds the run's training time so far; it is brought up to
    date before every save.
    """
    state = {"done": start}
    try:
        return _steps(train_step, batches, start, total, config, writer, train_seconds, hooks,
                      stop, state)
    except _LOST_WORKER as e:
        # A collective op (the step's all-reduce, a checkpoint's broadcast) failed because a
        # worker is gone.
        if not several_workers:
            raise
        raise RunError(
            f"lost contact with another worker at step {state['done'] + 1} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}). The last complete checkpoint is kept; start every "
            "worker again with the same command to resume."
        ) from None


def _steps(train_step, batches, start, total, config, writer, train_seconds, hooks, stop, state):
    """The loop itself (train_loop's body); state["done"] is the last step completed."""
    window, last = _Window(), {}
    trained = float(train_seconds.numpy())
    for step in range(start, total):
        done = step + 1
        collect = collect_level(done, total, config)
        images, labels = next(batches)
        metrics = train_step(images, labels, collect)
        if not steps_lib.is_finite(metrics):
            hooks.diagnose(done, images, metrics)
        trained += window.add(metrics)
        if collect != steps_lib.NOTHING:
            writer.write(done, metrics)
        if done % config.log_every == 0 or done == total:
            last = window.close(config.batch_size)
            writer.write(
                done,
                {
                    tags.STEPS_PER_SEC: last["steps_per_sec"],
                    tags.IMAGES_PER_SEC: last["images_per_sec"],
                },
            )
            eta = (total - done) / max(last["steps_per_sec"], 1e-9)
            hooks.log(
                f"step {done}/{total}  loss {last['loss']:.4f}  acc {last['accuracy']:.4f}  "
                f"{last['images_per_sec']:.0f} img/s  ETA {duration(eta)}"
            )
        if done % config.eval_every == 0 or done == total:
            result = hooks.validate(done)
            if result:
                hooks.log(
                    f"step {done}/{total}  val loss {result['loss']:.4f}  val acc "
                    f"{result['accuracy']:.4f}"
                )
        if done % config.checkpoint_every == 0 or done == total or stop.signum is not None:
            train_seconds.assign(trained)
            saved = hooks.save(done)
        window.skip()  # validation and saving are not training time
        state["done"] = done
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            raise Interrupted(
                f"{name} received: stopped at step {done} of {total} after saving {saved}. Run "
                "the same command again to resume.",
                stop.signum,
            )
    return last


class _Window:
    """Mean loss/accuracy and throughput over the steps since the last log line.

    Each `add` counts the time since the previous mark (the step just run); `skip` moves the
    mark past work that is not training (validation, saving)."""

    def __init__(self):
        self.steps, self.loss, self.accuracy, self.seconds = 0, 0.0, 0.0, 0.0
        self._mark = time.perf_counter()

    def add(self, metrics: dict) -> float:
        """Adds a step (its metrics are read, so it has finished); returns its seconds."""
        self.loss += float(metrics[tags.LOSS])
        self.accuracy += float(metrics[tags.ACCURACY])
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        self.steps += 1
        self.seconds += seconds
        return seconds

    def skip(self) -> None:
        self._mark = time.perf_counter()

    def close(self, batch_size: int) -> dict:
        """The window's means and throughput; starts a new window."""
        steps_per_sec = self.steps / max(self.seconds, 1e-9)
        out = {
            "loss": self.loss / self.steps,
            "accuracy": self.accuracy / self.steps,
            "steps_per_sec": steps_per_sec,
            "images_per_sec": steps_per_sec * batch_size,
        }
        self.steps, self.loss, self.accuracy, self.seconds = 0, 0.0, 0.0, 0.0
        return out


def duration(seconds: float | None) -> str:
    """h:mm:ss."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
