"""The training loop: compiled loops of steps, and the periodic actions between them.

The steps between two host events (a summary, a log line, a validation, a checkpoint, the end)
run as compiled loops of up to --steps_per_loop steps with no host round trip between steps;
the host reads the loop's loss, accuracy and finiteness once. At an event, in order: run the
step that collects summaries or histograms (when due), stop on a non-finite loss, write the
summaries, log, validate, checkpoint, and stop after saving if SIGINT/SIGTERM arrived.
Histograms are due at the first and the last step of a run and every `histogram_every` steps,
so even a short run has some.

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


RESUME = "Run the same command again to resume."


@dataclasses.dataclass
class Hooks:
    """What the loop calls between steps.

    Attributes:
        validate: validates at a step (and writes its summaries); returns the results.
        save: saves a checkpoint at a step; returns its path.
        diagnose: called with the number of a non-finite step (which applied nothing); raises
            NonFiniteError naming the first non-finite layer.
        log: progress lines.
        resume: what an interruption's message tells the user to do to resume.
    """

    validate: Callable[[int], dict]
    save: Callable[[int], str]
    diagnose: Callable[[int], None]
    log: Callable[[str], None]
    resume: str = RESUME


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
        return _steps(
            train_step, batches, start, total, config, writer, train_seconds, hooks, stop, state
        )
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


def _next_event(done: int, total: int, config: Config) -> int:
    """The first step after `done` at which the host has something to do: collect summaries,
    log, validate, checkpoint, or end. A compiled loop of steps runs up to it, never past."""
    events = [total, done + config.steps_per_loop]
    for every in (
        config.summary_every,
        config.histogram_every,
        config.log_every,
        config.eval_every,
        config.checkpoint_every,
    ):
        events.append((done // every + 1) * every)
    if done == 0:
        events.append(1)  # the first step collects histograms
    return min(events)


def _steps(train_step, batches, start, total, config, writer, train_seconds, hooks, stop, state):
    """The loop itself (train_loop's body); state["done"] is the last step completed.

    Between two host events (next_event) the steps run in compiled loops of up to
    --steps_per_loop steps (TrainStep.loop); the step that ends at an event collecting
    summaries runs alone with them. Ctrl-C is seen between loops."""
    window, last = _Window(), {}
    trained = float(train_seconds.numpy())
    done = start
    while done < total:
        end = _next_event(done, total, config)
        collect = collect_level(end, total, config)
        plain = end - done - (collect != steps_lib.NOTHING)  # steps that collect nothing
        if plain > 0:
            result = train_step.loop(batches, plain)
            ran = int(result[steps_lib.LOOP_STEPS])
            trained += window.add_loop(ran, result)
            if not bool(result[steps_lib.LOOP_FINITE]):
                hooks.diagnose(done + ran)
            done += ran
        if collect != steps_lib.NOTHING:
            images, labels = next(batches)
            metrics = train_step(images, labels, collect)
            if not steps_lib.is_finite(metrics):
                hooks.diagnose(done + 1)
            trained += window.add(metrics)
            done += 1
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
                f"{name} received: stopped at step {done} of {total} after saving {saved}. "
                + hooks.resume,
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
        return self._add(1, float(metrics[tags.LOSS]), float(metrics[tags.ACCURACY]))

    def add_loop(self, steps: int, result: dict) -> float:
        """Adds a compiled loop's steps (TrainStep.loop's sums); returns their seconds."""
        loss = float(result[steps_lib.LOOP_LOSS])
        return self._add(steps, loss, float(result[steps_lib.LOOP_ACCURACY]))

    def _add(self, steps: int, loss: float, accuracy: float) -> float:
        self.loss += loss
        self.accuracy += accuracy
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        self.steps += steps
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
