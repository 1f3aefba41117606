"""The estimator-style trainer: train, evaluate and train_and_evaluate over a model_dir.

model_dir layout (self-describing):
    flags.txt        the run's whole configuration, absl flagfile format
    checkpoints/     tf.train.CheckpointManager: step, model, optimizer
    train/, eval/    TensorBoard event files (eval/ holds validation and test)
    events.*         the HParams record of this run (TensorBoard's HParams dashboard)
    metrics.json     final metrics, written when training completes
    lock             held while a training runs (pid, host, start time)
    .worker-N/       multi_worker only: worker N's scratch checkpoints, deleted when it ends

Under tf.distribute (--strategy) every variable is created in the strategy's scope, one
compiled step runs on every replica (strategy.run) with the loss divided by the global batch,
gradients are summed over replicas and applied once; only the chief (worker 0) writes flags,
summaries, metrics and the checkpoints that count.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from normlab import data
from normlab.models.cnn import CNN
from normlab.trainer import checkpoints, distribute, events, lock, summaries
from normlab.trainer.config import Config, flags_path
from normlab.trainer.errors import RunError, UsageError
from normlab.trainer.optim import learning_rate, make_optimizer

METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


def _write_atomically(path: str, text: str) -> None:
    """Writes via a temporary file and a rename, so a kill never leaves a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare_model_dir(model_dir: str) -> None:
    """Creates model_dir, or raises UsageError if it cannot be a run directory."""
    if not model_dir:
        raise UsageError(
            "--model_dir is required: the directory that holds the run's "
            "flags, checkpoints, summaries and metrics."
        )
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UsageError(
            f"--model_dir={model_dir} is a file, not a directory. Choose another path."
        )
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --model_dir={model_dir}: {e.strerror}.") from None
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise UsageError(
            f"--model_dir={model_dir} is not writable. Choose a directory you can write to."
        )


class Interrupted(RunError):
    """SIGINT/SIGTERM stopped training after saving a checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(RunError):
    """Training produced a non-finite loss or gradient; `step` and `layer` say where."""

    def __init__(self, step: int, layer: str, message: str):
        super().__init__(message)
        self.step = step
        self.layer = layer


class Trainer:
    """Trains and evaluates one CNN in one model_dir, resuming from its latest checkpoint."""

    def __init__(
        self,
        config: Config,
        model_dir: str,
        *,
        splits: data.Splits | None = None,
        log: Callable[[str], None] = print,
        read_only: bool = False,
    ):
        """Builds the model and restores model_dir's latest checkpoint, if any.

        Args:
            config: the run's settings; checked against model_dir's saved flags.
            model_dir: the run directory (created unless read_only).
            splits: preloaded data (tests, eval.py); loaded from config otherwise.
            log: where progress lines go.
            read_only: for evaluating a run: write nothing into model_dir (no flags, no
                summaries, no clean-up); training is refused.
        """
        config.validate()
        self.read_only = read_only
        self.config = config
        self.model_dir = model_dir
        self.log = log
        if read_only and not os.path.isdir(model_dir):
            raise UsageError(f"{model_dir} is not a directory")
        # First of all: logical CPU devices must be configured before TensorFlow runs an op.
        self.strategy = (
            tf.distribute.get_strategy()
            if read_only
            else distribute.make_strategy(
                config.strategy,
                config.virtual_cpus,
                config.collective_timeout,
                startup_timeout=config.startup_timeout,
                log=log,
            )
        )
        self.is_chief = distribute.is_chief(self.strategy)
        # Whether this process writes the run directory: not for evaluation, not a non-chief.
        self.writes = not read_only and self.is_chief
        # The data first: a missing dataset or a batch larger than it fails before anything
        # is written into model_dir.
        self.splits = (
            splits
            if splits is not None
            else data.load(config.dataset, config.data_dir or None, config.validation_size)
        )
        self.steps_per_epoch = data.steps_per_epoch(len(self.splits.train_x), config.batch_size)
        self.total_steps = config.total_steps(self.steps_per_epoch)
        if self.writes:
            prepare_model_dir(model_dir)
            lock.acquire(model_dir, log)
        try:
            self._build(config, model_dir, read_only)
        except BaseException:
            if self.writes:  # a run that failed to open must not look held by a dead pid
                lock.release(model_dir)
            raise

    def _build(self, config: Config, model_dir: str, read_only: bool) -> None:
        """The rest of __init__, under the model_dir lock: flags, model, checkpoint, restore."""
        if self.writes:
            self._check_or_save_flags()
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        if config.check_numerics:
            tf.debugging.enable_check_numerics()

        info = self.splits.info
        with self.strategy.scope():  # variables mirrored on every replica
            self.model = CNN(config.model_config(info.image_shape, info.num_classes))
            self.layer_names = [name for name, _ in self.model.named_layers()]
            self.variables, self._layer_slices = [], {}
            for name, layer in self.model.named_layers():
                start = len(self.variables)
                self.variables += list(layer.trainable_variables)
                self._layer_slices[name] = (start, len(self.variables))
            self.optimizer = make_optimizer(config.optimizer, self.variables, config.momentum)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

        self.checkpoint = tf.train.Checkpoint(
            step=self.step, model=self.model, optimizer=self.optimizer
        )
        checkpoint_dir = os.path.join(model_dir, CHECKPOINT_DIR)
        latest = tf.train.latest_checkpoint(checkpoint_dir)
        if not read_only and not self.is_chief:
            # A non-chief restores the chief's checkpoint (model_dir must be on storage every
            # worker sees) and saves to a scratch directory of its own, deleted at the end.
            checkpoint_dir = self._scratch_dir()
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if self.writes:  # repair what a killed save left behind (trainer/checkpoints.py)
            for name in checkpoints.remove_temporary(checkpoint_dir):
                self.log(f"removed {name}: a checkpoint whose save was interrupted")
            for name in checkpoints.remove_unlisted_and_excess(checkpoint_dir, config.max_to_keep):
                self.log(f"removed {name}: not (or no longer) listed as a kept checkpoint")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, checkpoint_dir, max_to_keep=config.max_to_keep, step_counter=self.step
        )
        self._restore(self.manager.latest_checkpoint if self.is_chief else latest)
        if self.writes:
            # Summaries written after the checkpoint we resume from would appear twice.
            for sub in ("train", "eval"):
                dropped = events.truncate_after(os.path.join(model_dir, sub), self.current_step)
                if dropped:
                    self.log(
                        f"dropped {dropped} {sub} summaries written after step "
                        f"{self.current_step} by the interrupted run"
                    )

        self._train_step = tf.function(self._train_step_impl)
        self._eval_step = tf.function(self._eval_step_impl)
        self._writers = {}

    @property
    def current_step(self) -> int:
        """Steps trained so far (also under a strategy, whose variables int() cannot read)."""
        return int(self.step.numpy())

    # -- model_dir bookkeeping ---------------------------------------------------------------

    def _check_or_save_flags(self) -> None:
        """Saves the flags; refuses settings that differ from a saved run's checkpoints."""
        path = flags_path(self.model_dir)
        if os.path.exists(path):
            saved = Config.from_flagfile(path)
            conflicts = saved.differences(self.config)
            has_checkpoint = (
                tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINT_DIR)) is not None
            )
            if conflicts and has_checkpoint:
                raise UsageError(
                    f"{self.model_dir} holds a run with other settings; resuming it with these "
                    f"would mix two experiments: {'; '.join(conflicts)}. Resume with the saved "
                    f"flags (train.py --model_dir={self.model_dir} alone reuses them) or choose "
                    "a new --model_dir."
                )
            if conflicts:
                self.log(f"replacing the flags of {self.model_dir}: it has no checkpoint yet")
        _write_atomically(path, self.config.to_flagfile())

    def restore(self, path: str) -> None:
        """Restores a named checkpoint (a path, or a name like ckpt-300 in checkpoints/)."""
        candidates = [path, os.path.join(self.model_dir, CHECKPOINT_DIR, path)]
        found = next((p for p in candidates if tf.io.gfile.exists(p + ".index")), None)
        if found is None:
            available = ", ".join(os.path.basename(p) for p in self.manager.checkpoints)
            raise UsageError(
                f"no checkpoint {path!r} in {self.model_dir}; available: {available or 'none'}"
            )
        self._restore(found)

    def _restore(self, path: str | None) -> None:
        if path is None:
            return
        try:
            # assert_consumed, not assert_existing_objects_matched: a batch-norm checkpoint
            # holds every variable a layer-norm model has (gamma, beta, kernels) plus moving
            # statistics, and would otherwise restore "successfully" into the wrong model.
            self.checkpoint.restore(path).assert_consumed()
        except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (OpError,
            # AssertionError, ValueError, IndexError "read less bytes than requested", ...)
            raise RunError(
                f"cannot restore {path}: it is damaged or does not match this model "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Was it written by "
                "another architecture or norm? Use a new --model_dir."
            ) from None
        self.log(f"resumed from {path} at step {self.current_step}")

    def _scratch_dir(self) -> str:
        return os.path.join(self.model_dir, f".worker-{distribute.worker_index(self.strategy)}")

    def _writer(self, name: str):
        if not self.writes:
            return None
        if name not in self._writers:
            path = self.model_dir if name == "hparams" else os.path.join(self.model_dir, name)
            self._writers[name] = tf.summary.create_file_writer(path)
        return self._writers[name]

    # -- compiled steps --------------------------------------------------------------------

    def _replica_step(self, images, labels, collect_stats: bool):
        """One replica's share: loss over the global batch size, gradients, correct count."""
        with tf.GradientTape() as tape:
            logits, stats = self.model.forward(images, training=True, collect_stats=collect_stats)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            # Divided by the global batch, so the replicas' losses (and gradients) sum to the
            # global batch's mean.
            loss = tf.reduce_sum(per_example) / self.config.batch_size
        grads = tape.gradient(loss, self.variables)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        )
        return loss, correct, grads, stats

    def _train_step_impl(self, images, labels, collect_stats: bool):
        strategy, total = self.strategy, tf.distribute.ReduceOp.SUM
        loss, correct, grads, stats = strategy.run(
            self._replica_step, args=(images, labels, collect_stats)
        )
        loss = strategy.reduce(total, loss, axis=None)
        grads = [strategy.reduce(total, g, axis=None) for g in grads]
        # Activation statistics: the replicas' values averaged.
        stats = {
            k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in stats.items()
        }
        accuracy = strategy.reduce(total, correct, axis=None) / self.config.batch_size
        lr = learning_rate(
            self.step,
            peak=self.config.learning_rate,
            total_steps=self.total_steps,
            warmup_steps=self.config.warmup_steps,
            schedule=self.config.lr_schedule,
        )
        squared = [tf.reduce_sum(tf.square(g)) for g in grads]
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "learning_rate": lr,
            "grad_norm/global": tf.sqrt(tf.add_n(squared)),
        }
        for name, (start, end) in self._layer_slices.items():
            metrics[f"grad_norm/{name}"] = tf.sqrt(tf.add_n(squared[start:end]))
        finite = tf.math.is_finite(loss) & tf.math.is_finite(metrics["grad_norm/global"])
        metrics["finite"] = finite

        def apply():
            self.optimizer.apply(grads, self.variables, lr)
            self.step.assign_add(1)
            return tf.constant(True)

        # A non-finite step changes no weight: the caller stops with the last good state.
        tf.cond(finite, apply, lambda: tf.constant(False))
        return metrics, stats

    def _eval_step_impl(self, images, labels):
        logits = self.model(images, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return tf.reduce_sum(losses), tf.argmax(logits, -1, output_type=tf.int32)

    # -- training ----------------------------------------------------------------------------

    def train(self) -> dict:
        """Trains up to the configured total steps; returns the last logged training metrics."""
        if self.read_only:
            raise UsageError("this Trainer was opened read-only (for evaluation)")
        c = self.config
        start = self.current_step
        total = self.total_steps
        if start >= total:
            self.log(f"already trained: step {start} of {total}")
            return {}
        summaries.write_hparams(
            self._writer("hparams"),
            self.hparams(),
            os.path.basename(os.path.abspath(self.model_dir)),
        )
        dataset = data.train_dataset(
            self.splits.train_x,
            self.splits.train_y,
            batch_size=c.batch_size,
            seed=c.seed,
            start_step=start,
            pixel_mean=self.splits.pixel_mean,
            pixel_std=self.splits.pixel_std,
            augment=c.augment,
        )
        if start == 0 and c.wn_init == "data":
            images, _ = dataset.take(1).get_single_element()
            with self.strategy.scope():
                self.model.initialize_from_data(images)
            self.log("weight norm: data-dependent init on the first batch")
        if self.strategy.num_replicas_in_sync > 1:
            # Each global batch is split over the replicas (and workers): a worker takes its
            # replicas' slices of every batch, so the order stays a function of (seed, step).
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA
            )
            dataset = self.strategy.experimental_distribute_dataset(dataset.with_options(options))
            self.log(
                f"{self.strategy.num_replicas_in_sync} replicas "
                f"({type(self.strategy).__name__}), "
                f"{c.batch_size // self.strategy.num_replicas_in_sync} examples each"
            )
        batches = iter(dataset)

        self.log(
            f"training {c.norm} norm ({c.norm_impl}) on {c.dataset}: steps {start} -> "
            f"{total}, {self.steps_per_epoch} steps per epoch, batch {c.batch_size}"
        )
        with _StopOnSignals() as stop:
            return self._train_loop(batches, start, total, stop)

    def _train_loop(self, batches, start: int, total: int, stop: "_StopOnSignals") -> dict:
        """The loop of `train`: steps, summaries, logs, validation, checkpoints, signals."""
        c = self.config
        window_start, window_steps, window_loss, window_acc = time.perf_counter(), 0, 0.0, 0.0
        run_start = time.perf_counter()
        last = {}
        for step in range(start, total):
            done = step + 1
            collect = done % c.summary_every == 0
            try:
                images, labels = next(batches)
                metrics, stats = self._train_step(images, labels, collect)
            except (
                tf.errors.UnavailableError,
                tf.errors.DeadlineExceededError,
                tf.errors.CancelledError,
                tf.errors.AbortedError,
            ) as e:
                if self.strategy.num_replicas_in_sync == 1:
                    raise
                self.close()
                raise RunError(
                    f"lost contact with another worker at step {done} "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160]}). The last complete "
                    f"checkpoint ({self.manager.latest_checkpoint or 'none yet'}) is kept; "
                    "start every worker again with the same command to resume."
                ) from None
            if not bool(metrics["finite"]):
                self._stop_on_non_finite(step, images, metrics)
            window_steps += 1
            window_loss += float(metrics["loss"])
            window_acc += float(metrics["accuracy"])

            if collect:
                scalars = {f"train/{k}": metrics[k] for k in ("loss", "accuracy", "learning_rate")}
                scalars.update({k: v for k, v in metrics.items() if k.startswith("grad_norm/")})
                scalars.update({f"activation/{k}": v for k, v in stats.items()})
                scalars.update(self._param_norms())
                summaries.write_scalars(self._writer("train"), done, scalars)
            if done % c.histogram_every == 0:
                summaries.write_histograms(
                    self._writer("train"),
                    done,
                    {
                        f"weights/{name}/{v.name.split(':')[0]}": v
                        for name, layer in self.model.named_layers()
                        for v in layer.trainable_variables
                    },
                )
            if done % c.log_every == 0 or done == total:
                elapsed = time.perf_counter() - window_start
                steps_per_sec = window_steps / max(elapsed, 1e-9)
                last = {
                    "loss": window_loss / window_steps,
                    "accuracy": window_acc / window_steps,
                    "steps_per_sec": steps_per_sec,
                    "images_per_sec": steps_per_sec * c.batch_size,
                }
                summaries.write_scalars(
                    self._writer("train"),
                    done,
                    {
                        "train/steps_per_sec": last["steps_per_sec"],
                        "train/images_per_sec": last["images_per_sec"],
                    },
                )
                eta = (total - done) / max(steps_per_sec, 1e-9)
                self.log(
                    f"step {done}/{total}  loss {last['loss']:.4f}  acc "
                    f"{last['accuracy']:.4f}  {last['images_per_sec']:.0f} img/s  "
                    f"ETA {_duration(eta)}"
                )
                window_start, window_steps, window_loss, window_acc = (
                    time.perf_counter(),
                    0,
                    0.0,
                    0.0,
                )
            paused = time.perf_counter()  # validation and saving are not training throughput
            if done % c.eval_every == 0 or done == total:
                result = self.evaluate("val")
                self._last_val = (done, result)
                if result:
                    self.log(
                        f"step {done}/{total}  val loss {result['loss']:.4f}  val acc "
                        f"{result['accuracy']:.4f}"
                    )
            if done % c.checkpoint_every == 0 or done == total or stop.signum is not None:
                self.manager.save(checkpoint_number=done)
            window_start += time.perf_counter() - paused
            if stop.signum is not None:
                self.close()
                name = signal.Signals(stop.signum).name
                raise Interrupted(
                    f"{name} received: stopped at step {done} of {total} after "
                    f"saving {self.manager.latest_checkpoint}. Run the same "
                    "command again to resume.",
                    stop.signum,
                )
        self.flush()
        last["train_seconds"] = time.perf_counter() - run_start
        return last

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes summaries and releases the model_dir lock (a non-chief: its scratch)."""
        self.flush()
        if self.writes:
            lock.release(self.model_dir)
        elif not self.read_only:
            shutil.rmtree(self._scratch_dir(), ignore_errors=True)

    def _param_norms(self) -> dict:
        return {
            f"param_norm/{name}/{v.name.split(':')[0]}": tf.norm(v)
            for name, layer in self.model.named_layers()
            for v in layer.trainable_variables
        }

    def _stop_on_non_finite(self, step, images, metrics) -> None:
        """Names the first layer whose activations or gradients are not finite, then stops."""
        images = self.strategy.experimental_local_results(images)[0]  # this replica's slice
        _, stats = self.model.forward(images, training=False, collect_stats=True)
        culprit = next(
            (key.split("/")[0] for key, value in stats.items() if not np.isfinite(float(value))),
            None,
        )
        if culprit is None:
            culprit = next(
                (
                    name
                    for name in self.layer_names
                    if not np.isfinite(float(metrics[f"grad_norm/{name}"]))
                ),
                "the loss",
            )
        self.close()
        raise NonFiniteError(
            step + 1,
            culprit,
            f"non-finite loss or gradient at step {step + 1} (loss {float(metrics['loss'])}); "
            f"first non-finite layer: {culprit}. Training stopped; the last good checkpoint "
            f"({self.manager.latest_checkpoint or 'none yet'}) is kept. Try a lower "
            f"--learning_rate (now {self.config.learning_rate}) or a normalization.",
        )

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, split: str = "test") -> dict:
        """Inference-mode loss, accuracy and per-class accuracy on 'val' or 'test'.

        Writes eval/<split>_loss and eval/<split>_accuracy at the current step.
        """
        if split == "val":
            x, y = self.splits.val_x, self.splits.val_y
        elif split == "test":
            x, y = self.splits.test_x, self.splits.test_y
        else:
            raise UsageError(f"split must be val or test, got {split!r}")
        if len(x) == 0:
            return {}
        dataset = data.eval_dataset(
            x,
            y,
            batch_size=self.config.eval_batch_size,
            pixel_mean=self.splits.pixel_mean,
            pixel_std=self.splits.pixel_std,
        )
        loss_sum, predictions = 0.0, []
        for images, labels in dataset:
            batch_loss, batch_pred = self._eval_step(images, labels)
            loss_sum += float(batch_loss)
            predictions.append(batch_pred.numpy())
        predictions = np.concatenate(predictions)
        labels = np.asarray(y)
        correct = predictions == labels
        classes = self.splits.info.num_classes
        per_class = [
            float(correct[labels == k].mean()) if np.any(labels == k) else float("nan")
            for k in range(classes)
        ]
        result = {
            "loss": loss_sum / len(labels),
            "accuracy": float(correct.mean()),
            "per_class_accuracy": per_class,
            "examples": int(len(labels)),
            "predictions": predictions,
        }
        summaries.write_scalars(
            self._writer("eval"),
            self.current_step,
            {f"eval/{split}_loss": result["loss"], f"eval/{split}_accuracy": result["accuracy"]},
        )
        return result

    def train_and_evaluate(self) -> dict:
        """Trains to the end, then evaluates on validation and test; writes metrics.json."""
        train_metrics = self.train()
        results = {"step": self.current_step, "total_steps": self.total_steps}
        for split in ("val", "test"):
            cached = getattr(self, "_last_val", None)
            if split == "val" and cached and cached[0] == self.current_step:
                result = cached[1]  # the loop validated this very step
            else:
                result = self.evaluate(split)
            if result:
                results[f"{split}_loss"] = result["loss"]
                results[f"{split}_accuracy"] = result["accuracy"]
                results[f"{split}_per_class_accuracy"] = result["per_class_accuracy"]
        results["parameters"] = self.model.num_parameters()
        results.update(
            {k if k.startswith("train") else f"train_{k}": v for k, v in train_metrics.items()}
        )
        summaries.write_scalars(
            self._writer("eval"),
            self.current_step,
            {
                "final/test_accuracy": results["test_accuracy"],
                "final/test_loss": results["test_loss"],
            },
        )
        if self.writes:
            _write_atomically(
                os.path.join(self.model_dir, METRICS_FILE), json.dumps(results, indent=2) + "\n"
            )
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # A last all-reduce as a barrier: no worker exits while another still evaluates
            # (the chief would otherwise log the early leaver as unhealthy).
            one = self.strategy.run(lambda: tf.constant(1.0))
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None)
        self.close()
        self.log(
            f"test accuracy {results['test_accuracy']:.4f}  test loss "
            f"{results['test_loss']:.4f}  ({self.model_dir}/{METRICS_FILE})"
        )
        return results

    def hparams(self) -> dict:
        c = self.config
        return {
            "norm": c.norm,
            "norm_impl": c.norm_impl,
            "arch": c.arch,
            "learning_rate": c.learning_rate,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "optimizer": c.optimizer,
            "dataset": c.dataset,
        }


class _StopOnSignals:
    """Within the block, SIGINT and SIGTERM only record themselves: the training loop stops at
    the end of the current step, saves and exits cleanly instead of dying mid-save."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
