"""The estimator-style trainer: train, evaluate and train_and_evaluate over a run directory.

`Trainer(config, model_dir)` builds the data, the model and optimizer (in the tf.distribute
strategy's scope), opens the run directory (trainer/run_dir.py) and restores its latest
checkpoint. `train()` runs the loop (trainer/loop.py) over the compiled step
(trainer/steps.py); `evaluate(split)` runs the eval step over a split; `train_and_evaluate()`
does both and writes metrics.json.

Under tf.distribute (--strategy) every variable is created in the strategy's scope, the step
runs on every replica with the loss divided by the global batch, gradients are summed over
replicas and applied once; only the chief (worker 0) writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable

import tensorflow as tf

from normlab import data
from normlab.data.pipeline import InGraphBatches
from normlab.core import registry
from normlab.models import build_model, population
from normlab.trainer import (
    checkpoints,
    distribute,
    divergence,
    loop,
    optim,
    steps,
    summaries,
)
from normlab.trainer.config import Config
from normlab.trainer.errors import UsageError
from normlab.trainer.run_dir import RunDirectory
from normlab.trainer.signals import StopOnSignals

COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}


class Trainer:
    """Trains and evaluates one model in one run directory, resuming from its latest checkpoint.

    Args:
        config: the run's settings; checked against model_dir's saved flags.
        model_dir: the run directory (created unless read_only).
        splits: preloaded data (tests, eval.py, report.py); loaded from config otherwise.
        log: where progress lines go.
        read_only: for evaluating a run: write nothing into model_dir; training is refused.
            The newest intact checkpoint is restored, even while another process trains the
            run (a damaged newest one is skipped, and `log` says so).
        checkpoint: read_only: restore this checkpoint (a path, or a name like ckpt-300 in
            checkpoints/) instead of the newest.
        start_over: train from step 0 whatever model_dir holds (train.py's --start_over):
            the earlier run is moved into earlier-attempts/N-start-over/ first (kept), and
            settings that differ from its saved ones are accepted. Without it, a run with a
            checkpoint resumes; one without starts at 0 (run_dir.start_from_step_0's rules).

    Attributes (besides the model, optimizer, steps and writers):
        restored: the path of the checkpoint last restored (None: a new run).
    """

    def __init__(
        self,
        config: Config,
        model_dir: str,
        *,
        splits: data.Splits | None = None,
        log: Callable[[str], None] = print,
        read_only: bool = False,
        checkpoint: str | None = None,
        start_over: bool = False,
    ):
        config.validate()
        config = config.resolved()  # the course net's fixed sizes, as flags.txt records them
        self.config, self.model_dir, self.log, self.read_only = config, model_dir, log, read_only
        self._wanted, self._start_over = checkpoint, start_over
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
        self.run_dir = RunDirectory(
            model_dir, writes=not read_only and self.is_chief, log=log, must_exist=read_only
        )
        # The data before the run directory: a missing dataset or a batch larger than it fails
        # before anything is written.
        self.splits = (
            splits
            if splits is not None
            else data.load(config.dataset, config.data_dir or None, config.validation_size)
        )
        self.steps_per_epoch = data.steps_per_epoch(len(self.splits.train_x), config.batch_size)
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self.run_dir.open()
        try:
            if not read_only and not start_over:  # eval.py may override settings
                self.run_dir.check_config(config)
            self._build()
        except BaseException:
            self.run_dir.close()  # a run that failed to open must not look held by a dead pid
            raise

    def _build(self) -> None:
        """Model, optimizer, checkpoint and steps; restores the latest checkpoint."""
        c = self.config
        if c.deterministic:
            # Op determinism is process-wide, and under it TensorFlow refuses any random op
            # without a seed. The global seed keeps the caller's own unseeded ops (a Keras
            # fit's shuffle in the same process) working; normlab's ops carry their own seeds.
            tf.config.experimental.enable_op_determinism()
            tf.random.set_seed(c.seed)
        if c.check_numerics:
            tf.debugging.enable_check_numerics()
        info = self.splits.info
        with self.strategy.scope():  # variables mirrored on every replica
            self.model = build_model(
                c, info.image_shape, info.num_classes, COMPUTE_DTYPES[c.precision]
            )
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            variables = [v for _, _, v in steps.layer_variables(self.model)]
            self.optimizer = optim.make_optimizer(c.optimizer, variables, c.momentum)
            loss_scale = optim.DynamicLossScale() if c.precision == "mixed_float16" else None
            self.train_step = steps.TrainStep(
                self.model,
                self.optimizer,
                step=self.step,
                learning_rate=self._learning_rate,
                global_batch_size=c.batch_size,
                strategy=self.strategy,
                loss_scale=loss_scale,
            )
        # Training wall time over every segment of the run, saved with the checkpoint. Not a
        # mirrored variable: each worker counts its own time, and only the chief's is kept.
        self.train_seconds = tf.Variable(
            0.0, dtype=tf.float64, trainable=False, name="train_seconds"
        )
        self.eval_step = steps.EvalStep(self.model)
        self.checkpoint = tf.train.Checkpoint(
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            train_seconds=self.train_seconds,
            **({"loss_scale": loss_scale} if loss_scale else {}),
        )
        if self._start_over and self.is_chief and not self.read_only:
            self.run_dir.start_over()
        self.run_dir.repair_checkpoints(c.max_to_keep)
        directory = self.run_dir.checkpoint_dir
        latest = tf.train.latest_checkpoint(directory)
        if not self.read_only and not self.is_chief:
            # A non-chief restores the chief's checkpoint (model_dir must be on storage every
            # worker sees) and saves to a scratch directory of its own, deleted at the end.
            directory = self.run_dir.scratch_checkpoint_dir(distribute.worker_index(self.strategy))
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=c.max_to_keep, step_counter=self.step
        )
        if self.read_only and self._wanted:
            self.restore(self._wanted)
        elif self.read_only:
            self.restored = checkpoints.restore_newest(self.checkpoint, directory, self.log)
        elif self.is_chief:
            restored = checkpoints.restore_newest(self.checkpoint, directory, self.log)
            if restored and checkpoints.set_aside_damaged(directory, restored, self.log):
                self.manager = tf.train.CheckpointManager(  # it read the state before the move
                    self.checkpoint, directory, max_to_keep=c.max_to_keep, step_counter=self.step
                )
            self.restored = restored
            if restored:
                self.log(f"resumed from {restored} at step {self.current_step}")
            elif not self._start_over:  # (start_over has moved the earlier run aside)
                self.run_dir.start_from_step_0()
        else:
            self._restore(latest)
        if self.current_step > self.total_steps:
            raise UsageError(
                f"{self.model_dir} is at step {self.current_step}, beyond --train_steps / "
                f"--epochs = {self.total_steps} steps: training cannot go back. Give at least "
                f"--train_steps={self.current_step} (or omit it to keep the saved length), or "
                "use a new --model_dir."
            )
        self.writers = summaries.open_writers(self.model_dir, self.run_dir.writes)
        self._hparams_written = False

    def _learning_rate(self, step: tf.Tensor) -> tf.Tensor:
        c = self.config
        return optim.learning_rate(
            step,
            peak=c.learning_rate,
            total_steps=self.total_steps,
            warmup_steps=c.warmup_steps,
            schedule=c.lr_schedule,
        )

    @property
    def current_step(self) -> int:
        """Steps trained so far (also under a strategy, whose variables int() cannot read)."""
        return int(self.step.numpy())

    # -- checkpoints -------------------------------------------------------------------------

    def restore(self, path: str) -> None:
        """Restores a named checkpoint (a path, or a name like ckpt-300 in checkpoints/)."""
        candidates = [path, os.path.join(self.run_dir.checkpoint_dir, path)]
        found = next((p for p in candidates if tf.io.gfile.exists(p + ".index")), None)
        if found is None:
            available = ", ".join(os.path.basename(p) for p in self.manager.checkpoints)
            raise UsageError(
                f"no checkpoint {path!r} in {self.model_dir}; available: {available or 'none'}"
            )
        self._restore(found)

    def _restore(self, path: str | None) -> None:
        self.restored = path
        if path is not None:
            checkpoints.restore(self.checkpoint, path)
            if not self.read_only:
                self.log(f"resumed from {path} at step {self.current_step}")

    # -- training ----------------------------------------------------------------------------

    def train(self) -> dict:
        """Trains up to the configured total steps; returns the last logged training metrics
        ({} when the run had already reached them: then nothing is written)."""
        if self.read_only:
            raise UsageError("this Trainer was opened read-only (for evaluation)")
        c, start, total = self.config, self.current_step, self.total_steps
        if start >= total:
            self._log_already_trained()
            return {}
        self.run_dir.save_config(c)
        self.run_dir.truncate_summaries(start)
        if not self._hparams_written:
            self.run_dir.remove_hparams_record()  # the settings of an earlier attempt
            self.writers["hparams"].write_hparams(self.hparams())
            self._hparams_written = True
        dataset = self.splits.train_batches(
            batch_size=c.batch_size, seed=c.seed, augment=c.augment, start_step=start
        )
        if start == 0 and c.wn_init == "data":
            images, _ = dataset.take(1).get_single_element()
            with self.strategy.scope():
                self.model.initialize_from_data(images)
            self.log("weight norm: data-dependent init on the first batch")
        replicas = self.strategy.num_replicas_in_sync
        if replicas > 1:
            # Each global batch is split over the replicas (and workers): a worker takes its
            # replicas' slices of every batch, so the order stays a function of (seed, step).
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA
            )
            dataset = self.strategy.experimental_distribute_dataset(dataset.with_options(options))
        if replicas > 1:
            self.log(
                f"global batch {c.batch_size}: {c.batch_size // replicas} examples per replica"
            )
        self.log(
            f"training {_describe_model(c)} on {c.dataset}: steps {start} -> {total}, "
            f"{self.steps_per_epoch} steps per epoch, batch {c.batch_size}"
        )
        if c.precision == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
            self.log(
                "note: mixed_float16 without a GPU: TensorFlow's float16 CPU kernels are much "
                "slower than float32's (bench/README.md); on a CPU, mixed_bfloat16 is the fast one"
            )
        hooks = loop.Hooks(
            validate=self._validate,
            save=lambda step: self.manager.save(checkpoint_number=step),
            diagnose=self._stop_on_non_finite,
            log=self.log,
            # The same command with --start_over would start over again, not resume.
            resume="Run the same command without --start_over to resume."
            if self._start_over
            else loop.RESUME,
        )
        try:
            with StopOnSignals() as stop:
                return loop.train_loop(
                    self.train_step,
                    self._in_graph_batches(start)
                    if replicas == 1 and self.in_graph_input
                    else iter(dataset),
                    start=start,
                    total=total,
                    config=c,
                    writer=self.writers["train"],
                    train_seconds=self.train_seconds,
                    hooks=hooks,
                    stop=stop,
                    several_workers=replicas > 1,
                )
        finally:
            self.flush()

    # False: training batches through a tf.data iterator, as before (bench.loop's baseline).
    in_graph_input = True

    def _in_graph_batches(self, start: int) -> InGraphBatches:
        """splits.train_batches' batches from step `start` on, made inside the compiled loop
        (data.pipeline.InGraphBatches); one object per Trainer, so the loop is traced once."""
        c = self.config
        if getattr(self, "_batches", None) is None:
            self._batches = InGraphBatches(
                self.splits.train_x,
                self.splits.train_y,
                batch_size=c.batch_size,
                seed=c.seed,
                pixel_mean=self.splits.pixel_mean,
                pixel_std=self.splits.pixel_std,
                augment=c.augment,
            )
        return self._batches.reset(start)

    def _validate(self, step: int) -> dict:
        result = self.evaluate("val")
        if result:
            self.writers["eval"].write(
                step, {summaries.LOSS: result["loss"], summaries.ACCURACY: result["accuracy"]}
            )
            self._last_val = (step, result)
        return result

    def _stop_on_non_finite(self, step: int) -> None:
        divergence.stop(self, step)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, split: str = "test") -> dict:
        """Inference-mode loss, accuracy and per-class accuracy on 'val' or 'test' ({} for an
        empty split); see steps.evaluate."""
        if split not in ("val", "test"):
            raise UsageError(f"split must be val or test, got {split!r}")
        dataset, y = self.splits.eval_batches(split, self.config.eval_batch_size)
        with self._population_statistics():
            return steps.evaluate(self.eval_step, dataset, y, self.splits.info.num_classes)

    def _population_statistics(self):
        """The batch-norm statistics evaluation uses, as a context (--bn_population): the
        moving ones, or precise ones recomputed now from the first --precise_bn_examples
        training examples (whole batches, unaugmented) and put back afterwards."""
        c = self.config
        if c.bn_population != "precise":
            return contextlib.nullcontext()
        if getattr(self, "_precise", None) is None:
            self._precise = population.for_model(self.model)
            # The same batches before every evaluation: made once (a new tf.data pipeline per
            # evaluation cost about as much as the recomputation at batch 128).
            count = -(-c.precise_bn_examples // c.batch_size)
            batches = self.splits.train_batches(batch_size=c.batch_size, seed=c.seed)
            self._precise_batches = [x for x, _ in batches.take(count)]
        statistics, _ = self._precise(iter(self._precise_batches))
        return population.using(statistics)

    def train_and_evaluate(self) -> dict:
        """Trains to the end, then evaluates on validation and test and merges the results
        into metrics.json. A run that had already finished is left as it is: its saved
        metrics are returned."""
        saved = self.run_dir.read_metrics()
        if self.current_step >= self.total_steps and saved.get("step") == self.current_step:
            self._log_already_trained()
            self.close()
            return saved
        last = self.train()
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
        results.update(self._throughput(last))
        final = {
            summaries.FINAL_TEST_ACCURACY: results.get("test_accuracy"),
            summaries.FINAL_TEST_LOSS: results.get("test_loss"),
            summaries.FINAL_VAL_ACCURACY: results.get("val_accuracy"),
            summaries.FINAL_VAL_LOSS: results.get("val_loss"),
        }
        self.writers["eval"].write(
            self.current_step, {k: v for k, v in final.items() if v is not None}
        )
        results = self.run_dir.write_metrics(results)
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # A last all-reduce as a barrier: no worker exits while another still evaluates
            # (the chief would otherwise log the early leaver as unhealthy).
            one = self.strategy.run(lambda: tf.constant(1.0))
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None)
        self.close()
        self.log(
            f"test accuracy {results['test_accuracy']:.4f}  test loss "
            f"{results['test_loss']:.4f}  ({os.path.join(self.model_dir, 'metrics.json')})"
        )
        return results

    def _log_already_trained(self) -> None:
        results = self.run_dir.results()
        self.log(
            f"already trained: step {self.current_step} of {self.total_steps}"
            + (f", {results} ({os.path.join(self.model_dir, 'metrics.json')})" if results else "")
        )

    def _throughput(self, last: dict) -> dict:
        """Training metrics for metrics.json: the last logged window's loss and accuracy, and
        time and throughput over every segment of the run (train_seconds is checkpointed)."""
        seconds = float(self.train_seconds.numpy())
        steps_done = self.current_step
        out = {
            "train_seconds": seconds,
            "train_steps_per_sec": steps_done / seconds if seconds > 0 else None,
            "train_images_per_sec": steps_done * self.config.batch_size / seconds
            if seconds > 0
            else None,
        }
        if last:
            out["train_loss"], out["train_accuracy"] = last["loss"], last["accuracy"]
        return out

    def hparams(self) -> dict:
        """The settings that define the experiment, for TensorBoard's HParams dashboard:
        every flag that may not change on resume, the length, the replicas and the precision."""
        import dataclasses

        values = {
            f.name: _hparam_value(getattr(self.config, f.name))
            for f in dataclasses.fields(self.config)
            if not f.metadata["resumable"]
        }
        values.update(
            total_steps=self.total_steps,
            epochs=round(self.total_steps / self.steps_per_epoch, 3),
            strategy=self.config.strategy,
            replicas=self.strategy.num_replicas_in_sync,
            precision=self.config.precision,
        )
        return values

    # -- closing -----------------------------------------------------------------------------

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes summaries and releases the run directory (a non-chief: its scratch)."""
        self.flush()
        self.run_dir.close()
        if not self.read_only and not self.is_chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)


def _describe_model(c: Config) -> str:
    """'the CNN with batch norm (normlab's)', 'the LSTM without normalization', ..."""
    model = {"lstm": "the LSTM", "course": "the course's CNN"}.get(c.arch, "the CNN")
    if c.norm == registry.NONE:
        return f"{model} without normalization"
    label = registry.get(c.norm).implementation(c.norm_impl).label
    return f"{model} with {c.norm} norm ({'normlab' if c.norm_impl == 'custom' else label})"


def _hparam_value(value):
    """HParams take bool, int, float or str."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value
