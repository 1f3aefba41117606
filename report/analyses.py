"""What the trainer does not record, computed by the trainer's own parts right after a run.

* `layer_parity`: custom vs built-in on the run's trained weights and its first real batch, at
  every norm layer (core.parity.compare), and each side's distance to the float64 reference.
* `twins`: custom, built-in and a one-ulp-perturbed custom model, each a Trainer from the
  run's config, trained in lock step by the trainer's step on the same batches: how far apart
  the built-in drifts, against how far any rounding-sized difference drifts.
* `bn_stats`: a batch-norm run's accuracy with each population method (plain and
  bias-corrected moving averages beside precise BN) and Wu & Johnson's train-test gap.
* `cost`: ms per training step of each norm's CNN, interleaved by bench.model's timer.
* `parity_table`: core.parity.table(), the float32/16 parity of every norm and built-in.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile

import numpy as np
import tensorflow as tf

from normlab.core import parity, registry
from normlab.trainer import summaries
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer

def _trainer(config: Config, model_dir: str, splits, read_only: bool = False) -> Trainer:
    return Trainer(config, model_dir, splits=splits, log=lambda _: None, read_only=read_only)


def first_batches(config: Config, splits, n: int = 1):
    """The run's first n training batches (its seed's data order)."""
    return splits.train_batches(batch_size=config.batch_size, seed=config.seed).take(n)


def _row(layer, norm, case, inputs, eps, groups) -> dict:
    result = parity.compare(case, inputs)
    values = list(inputs.values())
    exact = norm.bind(norm.reference, eps=eps, groups=groups)(
        *[np.asarray(v, np.float64) for v in values]
    )
    return {
        "layer": layer,
        "builtin": result.builtin_name,
        "forward_rel": result.forward_rel,
        "grad_rel": max(result.grad_rel.values()),
        "custom_err64": float(np.max(np.abs(np.asarray(case.custom(*values)) - exact))),
        "builtin_err64": float(np.max(np.abs(np.asarray(case.reference(*values)) - exact))),
    }


def layer_parity(config: Config, run_dir: str, splits) -> list[dict]:
    """Custom vs the built-in at every norm of the trained model, on its real inputs."""
    model = _trainer(config, run_dir, splits, read_only=True).model
    norm = registry.get(config.norm)
    if norm.target == registry.KERNEL:
        case = parity.cases_of(norm)[0]
        return [
            _row(
                name,
                norm,
                case,
                {"v": tf.convert_to_tensor(m.v), "g": tf.convert_to_tensor(m.g)},
                None,
                None,
            )
            for name, m in model.named_layers()
            if getattr(m, "kernel_norm", None) is not None
        ]
    images, _ = first_batches(config, splits).get_single_element()
    _, taps = model.forward(images, training=True, tap=True)
    rows = []
    for name, module in model.named_layers():
        if not name.endswith("_norm"):
            continue
        groups = getattr(module, "groups", None) if norm.grouped else None
        case = parity.cases_of(
            norm, eps=config.norm_eps, groups=groups, backward=config.norm_backward
        )[0]
        inputs = {"x": taps[f"{name[: -len('_norm')]}/pre"]}
        inputs.update({p.name: tf.convert_to_tensor(getattr(module, p.name)) for p in norm.params})
        rows.append(_row(name, norm, case, inputs, config.norm_eps, groups))
    return rows


def _distance(a: list, b: list) -> float:
    """||a - b|| / ||a|| over all parameters together, in float64."""
    a = [x.numpy().astype(np.float64) for x in a]
    b = [y.numpy().astype(np.float64) for y in b]
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b))
    return float(np.sqrt(num / sum(float(np.sum(x**2)) for x in a)))


def twins(config: Config, splits, n_steps: int) -> dict:
    """Per step: the built-in's and the one-ulp control's relative parameter distance to the
    custom model and the three losses; stops early if a twin's loss is not finite."""
    configs = {
        "custom": config,
        "builtin": dataclasses.replace(config, norm_impl="builtin"),
        "perturbed": config,
    }
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            k: _trainer(dataclasses.replace(c, train_steps=n_steps), os.path.join(tmp, k), splits)
            for k, c in configs.items()
        }
        for v in trainers["perturbed"].model.trainable_variables:
            v.assign(np.nextafter(v.numpy(), np.float32(np.inf)))
        weights = {k: t.model.trainable_variables for k, t in trainers.items()}
        out = {
            "step": [],
            "loss": {k: [] for k in trainers},
            "distance": {"builtin": [], "perturbed": []},
        }
        for step, (images, labels) in enumerate(first_batches(config, splits, n_steps), 1):
            losses = {
                k: float(t.train_step(images, labels)[summaries.LOSS]) for k, t in trainers.items()
            }
            if not np.all(np.isfinite(list(losses.values()))):
                break
            out["step"].append(step)
            for k, value in losses.items():
                out["loss"][k].append(value)
            for k in out["distance"]:
                out["distance"][k].append(_distance(weights["custom"], weights[k]))
        for t in trainers.values():
            t.close()
    return out


def moving_statistics(model) -> dict:
    """{"bias_corrected": ..., "plain": ...}: each a population.Statistics of the model's
    batch-norm modules, trained with bias-corrected moving averages. The plain average (Keras':
    started at mean 0, variance 1) is exactly derived from them: after t updates it holds
    momentum^t of its start and (1 - momentum^t) of the zero-started average, whose corrected
    form is what the modules hold, so plain = m^t * start + (1 - m^t) * corrected."""
    from normlab.models import population

    corrected, plain = {}, {}
    for m in population.batch_norm_modules(model):
        mean, var = tf.convert_to_tensor(m.moving_mean), tf.convert_to_tensor(m.moving_variance)
        t = tf.cast(tf.convert_to_tensor(m.moving_count), tf.float32)
        kept = tf.pow(tf.constant(m.momentum, tf.float32), t)
        kept = tf.reshape(kept, kept.shape + [1] * (mean.shape.rank - kept.shape.rank))
        corrected[m] = (mean, var)
        plain[m] = ((1 - kept) * mean, kept + (1 - kept) * var)
    return {"bias_corrected": corrected, "plain": plain}


def evaluate_with(trainer: Trainer, statistics: dict, split: str) -> dict:
    """The trainer's inference-mode evaluation of `split` with batch norm's statistics set to
    `statistics` (put back afterwards)."""
    from normlab.models import population
    from normlab.trainer import steps

    dataset, y = trainer.splits.eval_batches(split, trainer.config.eval_batch_size)
    with population.using(statistics):
        return steps.evaluate(trainer.eval_step, dataset, y, trainer.splits.info.num_classes)


def bn_stats(config: Config, run_dir: str, splits) -> dict:
    """A batch-norm run's accuracy by every population method, and Wu & Johnson's train-test
    inconsistency: validation and test accuracy with the plain and the bias-corrected moving
    averages (precise BN's are the run's own results); for the CNN, accuracy with mini-batch
    statistics (training mode, batches of the training size) on the first validation_size
    training examples and on the validation set. Training-mode calls move the moving
    statistics: they are put back."""
    from normlab import data

    trainer = _trainer(dataclasses.replace(config, bn_population="moving_average"), run_dir,
                       splits, read_only=True)  # fmt: skip
    model, out = trainer.model, {}
    for method, statistics in moving_statistics(model).items():
        for split in ("val", "test"):
            result = evaluate_with(trainer, statistics, split)
            out[f"{split}_accuracy_{method}"] = result.get("accuracy")
    if config.arch == "lstm":
        return out
    b = config.batch_size
    n = max(len(splits.val_y), b) // b * b
    predict = tf.function(
        lambda images: tf.argmax(model(images, training=True), -1, output_type=tf.int32),
        autograph=False,
    )

    def batch_stats_accuracy(x, y) -> float:
        dataset = data.eval_dataset(
            x[:n], y[:n], batch_size=b, pixel_mean=splits.pixel_mean, pixel_std=splits.pixel_std
        )
        hits = sum(int(tf.reduce_sum(tf.cast(predict(i) == lab, tf.int32))) for i, lab in dataset)
        return hits / len(y[:n])

    moving = [v for v in model.variables if not v.trainable]
    saved = [v.numpy() for v in moving]
    try:
        out["train_accuracy_batch_stats"] = batch_stats_accuracy(splits.train_x, splits.train_y)
        out["val_accuracy_batch_stats"] = batch_stats_accuracy(splits.val_x, splits.val_y)
    finally:
        for v, value in zip(moving, saved):
            v.assign(value)
    out["batch_stats_examples"] = n
    return out


def cost(configs: dict[str, Config], splits, rounds: int, n_steps: int) -> dict:
    """ms per training step of each config's model (the trainer's step on one real batch, 3
    warm-up steps each), timed by bench.model.interleaved: one sample per round per model."""
    from normlab.bench import model as bench_model

    with tempfile.TemporaryDirectory() as tmp:
        calls = {}
        for key, config in configs.items():
            trainer = _trainer(config, os.path.join(tmp, key), splits)
            images, labels = first_batches(config, splits).get_single_element()
            calls[key] = bench_model.step_runner(trainer, images, labels)
            for _ in range(3):
                float(calls[key]()[summaries.LOSS])
        seconds = bench_model.interleaved(calls, rounds, n_steps, random.Random(0))
    return {"ms_per_step": {k: [1000 * s for s in v] for k, v in seconds.items()}}


def parity_table() -> dict:
    return {"rows": [dataclasses.asdict(r) for r in parity.table()]}
