"""What the trainer does not record, computed from runs and cached under `<root>/analysis/`.

* `layer_parity`: custom vs built-in on the same trained weights and the same real batch, at
  every norm layer (forward and gradients, with core.parity.compare) and for the whole model.
* `twin_training`: custom, built-in and a one-ulp-perturbed custom model trained in lock step
  from the same initial weights on the same batches; how far apart they drift, step by step.
* `batch_statistics_eval`: a batch-norm run's test accuracy with the statistics of test
  batches of its training batch size (training mode) vs its moving statistics (inference).

Each result is a JSON file with the key of what it was computed from; a stale or missing one
is recomputed (or, under --report_only, reported as missing).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from normlab import core
from normlab import data
from normlab.core import builtin, parity
from normlab.models.cnn import CNN
from normlab.report.suite import read_json, write_json
from normlab.trainer.config import Config
from normlab.trainer.errors import UsageError
from normlab.trainer.optim import learning_rate, make_optimizer

ANALYSIS_DIR = "analysis"
# Part of every cache key: bump it when an analysis computes something new, so cached results
# of the old code are recomputed rather than reported.
ANALYSIS_VERSION = 2
# The test-set order of the batch-statistics evaluation: random batches, not the file order.
EVAL_ORDER_SEED = 1234


def cached(
    root: str,
    name: str,
    key: dict,
    compute: Callable[[], dict],
    allow_compute: bool,
    say: Callable[[str], None],
) -> tuple[dict, bool]:
    """The analysis `name` for `key`: from its file when the key matches, else computed.

    Returns ({"key", "seconds", "result"}, whether it was computed now); raises UsageError
    when it would have to compute but may not (--report_only).
    """
    key = _canonical({**key, "version": ANALYSIS_VERSION})
    path = os.path.join(root, ANALYSIS_DIR, f"{name}.json")
    saved = read_json(path)
    if saved and isinstance(saved.get("key"), dict) and _canonical(saved["key"]) == key:
        return saved, False
    if not allow_compute:
        raise UsageError(
            f"analysis {name} is {'stale' if saved else 'missing'} in {root}/{ANALYSIS_DIR}. "
            "Run report.py without --report_only to compute it."
        )
    say(f"analysis {name} ...")
    start = time.perf_counter()
    result = compute()
    entry = {"key": key, "seconds": time.perf_counter() - start, "result": result}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, entry)
    say(f"analysis {name}: {entry['seconds']:.1f} s")
    return entry, True


def _identity_fields() -> tuple[str, ...]:
    """The Config fields an analysis result depends on: those the trainer refuses to change on
    resume (the experiment-defining ones), and the data directory."""
    return tuple(
        f.name
        for f in dataclasses.fields(Config)
        if not f.metadata["resumable"] or f.name == "data_dir"
    )


def identity(config: Config) -> dict:
    """A config in a cache key: its experiment-defining fields, not the whole flagfile, so
    bookkeeping flags do not invalidate a result."""
    return {name: getattr(config, name) for name in _identity_fields()}


def _canonical(key: dict) -> dict:
    """The key with every config identity in it re-read under the current Config: a field
    added to Config since the key was saved counts as its default, a removed one is dropped.
    So a cached result stays valid across code changes that do not change its inputs."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}

    def fix(value):
        if not isinstance(value, dict):
            return value  # a key of another format: it will not match, so it is recomputed
        return {name: value.get(name, defaults[name]) for name in _identity_fields()}

    out = dict(key)
    if isinstance(out.get("config"), dict):
        out["config"] = fix(out["config"])
    if isinstance(out.get("configs"), dict):
        out["configs"] = {k: fix(v) for k, v in out["configs"].items()}
    return json.loads(json.dumps(out))  # tuples -> lists, as read back from the file


def first_batch(config: Config, splits) -> tuple[tf.Tensor, tf.Tensor]:
    """The run's first training batch (its seed's data order): real, standardized images."""
    dataset = data.train_dataset(
        splits.train_x,
        splits.train_y,
        batch_size=config.batch_size,
        seed=config.seed,
        pixel_mean=splits.pixel_mean,
        pixel_std=splits.pixel_std,
        augment=config.augment,
    )
    return dataset.take(1).get_single_element()


def _open(config: Config, run_dir: str, splits):
    """The run's latest checkpoint in a read-only Trainer (writes nothing to run_dir)."""
    from normlab.trainer.trainer import Trainer

    return Trainer(config, run_dir, splits=splits, log=lambda _: None, read_only=True)


# -- section 2a: the same weights, the same batch -------------------------------------------


def _backward(module) -> dict:
    """The custom gradient the model's module uses (models may choose closed_form/autodiff)."""
    backward = getattr(module, "backward", None)
    return {"backward": backward} if backward else {}


def _norm_case(module, norm: str) -> parity.Case:
    """The custom function (as the model calls it) and the built-in the model's builtin impl
    uses, with the module's eps."""
    eps = getattr(module, "eps", None)
    if norm == "batch":
        return parity.Case(
            "batch",
            "fused_batch_norm",
            functools.partial(core.batch_norm, eps=eps, **_backward(module)),
            functools.partial(builtin.fused_batch_norm, eps=eps),
            ("gamma", "beta"),
        )
    if norm == "layer":
        return parity.Case(
            "layer",
            "keras LayerNormalization(axis=[1,2,3])",
            functools.partial(core.layer_norm, eps=eps, **_backward(module)),
            functools.partial(builtin.layer_norm_keras, eps=eps),
            ("gamma", "beta"),
        )
    if norm == "group":
        return parity.Case(
            "group",
            f"keras GroupNormalization({module.groups})",
            functools.partial(core.group_norm, eps=eps, **_backward(module)),
            functools.partial(builtin.group_norm_keras, eps=eps),
            ("gamma", "beta"),
            groups=module.groups,
        )
    if norm == "weight":
        return parity.Case(
            "weight", "tf.nn.l2_normalize * g", core.weight_norm, builtin.weight_norm_l2, ("g",)
        )
    raise ValueError(f"no norm layers for norm={norm!r}")


def _custom_norm(module, norm: str, x: tf.Tensor) -> tf.Tensor:
    """The norm's training-mode output by the pure core function (no moving-average update)."""
    if norm == "batch":
        return core.batch_norm(x, module.gamma, module.beta, module.eps, **_backward(module))
    if norm == "layer":
        return core.layer_norm(x, module.gamma, module.beta, module.eps, **_backward(module))
    return core.group_norm(
        x, module.gamma, module.beta, module.groups, module.eps, **_backward(module)
    )


def reference64(norm: str, x, params: dict, eps: float = 1e-3, groups: int = 1) -> np.ndarray:
    """The norm's training-mode output in NumPy float64 with two-pass statistics: the yardstick
    that tells which of custom and built-in a difference comes from.

    batch: statistics over every axis but the last; layer: over every axis but the first;
    group: per example over each of `groups` groups of consecutive channels and all positions;
    weight: x is the kernel v, y = g * v / ||v|| with the norm over every axis but the last.
    """
    x = np.asarray(x, np.float64)
    if norm == "weight":
        v, g = x, np.asarray(params["g"], np.float64)
        return g * v / np.sqrt(np.sum(v**2, axis=tuple(range(v.ndim - 1))))
    gamma = np.asarray(params["gamma"], np.float64)
    beta = np.asarray(params["beta"], np.float64)
    if norm == "batch":
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes)
        return (x - mean) / np.sqrt(var + eps) * gamma + beta
    if norm == "layer":
        groups = 1
    elif norm != "group":
        raise ValueError(f"no float64 reference for norm={norm!r}")
    n, c = x.shape[0], x.shape[-1]
    grouped = x.reshape(n, -1, groups, c // groups)
    mean = grouped.mean((1, 3), keepdims=True)
    var = grouped.var((1, 3), keepdims=True)
    return ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


def _row(layer: str, case: parity.Case, inputs: dict, eps: float, groups: int) -> dict:
    """One table-2a row: core.parity.compare plus each side's distance to float64."""
    result = parity.compare(case, inputs)
    first = next(iter(inputs.values()))
    params = {k: v for k, v in inputs.items() if k not in ("x", "v")}
    ref = reference64(case.norm, first.numpy(), params, eps, groups)
    extra = {"groups": case.groups} if case.groups else {}
    values = [inputs[name] for name in inputs]
    return {
        "layer": layer,
        "builtin": result.builtin_name,
        "shape": list(result.shape),
        "reduced": int(np.prod(result.shape[:-1])) if case.norm == "batch" else None,
        "forward_abs": result.forward_abs,
        "forward_rel": result.forward_rel,
        "grad_rel": dict(result.grad_rel),
        "custom_err64": float(np.max(np.abs(case.custom(*values, **extra).numpy() - ref))),
        "builtin_err64": float(np.max(np.abs(case.reference(*values, **extra).numpy() - ref))),
    }


def norm_layer_rows(model: CNN, images: tf.Tensor) -> list[dict]:
    """Custom vs built-in at every norm layer of `model`, on that layer's real input.

    The layers are replayed in the CNN's order (models/cnn.py): conv -> norm -> relu -> pool
    per block, then dense -> norm -> relu; each norm's input is what the custom network feeds
    it. Weight norm has no input of its own: its rows compare the kernels g * v / ||v||.
    Each row also has both outputs' max abs error against a float64 NumPy reference.
    """
    norm = model.config.norm
    rows = []
    if norm == "weight":
        for layer in [*model.convs, model.dense, model.logits]:
            inputs = {"v": tf.convert_to_tensor(layer.v), "g": tf.convert_to_tensor(layer.g)}
            rows.append(_row(layer.name, _norm_case(layer, norm), inputs, 0.0, 1))
        return rows

    def compare(module, x):
        inputs = {
            "x": x,
            "gamma": tf.convert_to_tensor(module.gamma),
            "beta": tf.convert_to_tensor(module.beta),
        }
        case = _norm_case(module, norm)
        rows.append(_row(module.name, case, inputs, module.eps, getattr(module, "groups", 1)))
        return tf.nn.relu(_custom_norm(module, norm, x))

    h = images
    for conv, module in zip(model.convs, model.conv_norms):
        h = tf.nn.max_pool2d(compare(module, conv(h)), ksize=2, strides=2, padding="VALID")
    h = tf.reshape(h, [tf.shape(h)[0], -1])
    compare(model.dense_norm, model.dense(h))
    return rows


def _max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def _copy(model: CNN, impl: str, one_ulp: bool = False) -> CNN:
    """A new CNN holding model's weights, with another impl or every weight one ulp up."""
    other = CNN(dataclasses.replace(model.config, impl=impl))
    for mine, theirs in zip(model.variables, other.variables):
        theirs.assign(np.nextafter(mine.numpy(), np.float32(np.inf)) if one_ulp else mine)
    return other


def model_rows(model: CNN, images: tf.Tensor, labels: tf.Tensor) -> dict:
    """The whole custom model vs a built-in model holding the same weights, on one batch.

    Gradient differences are per variable, max |custom - built-in| / max |built-in|. A variable
    whose gradient is a small sum of large cancelling terms has a large relative rounding
    error whatever the implementation; the control measures that: the same difference between
    custom and custom with every weight moved by one float32 ulp.
    """
    models = {
        "custom": model,
        "builtin": _copy(model, "builtin"),
        "control": _copy(model, "custom", one_ulp=True),
    }
    # Inference first: training mode moves batch norm's moving statistics.
    inference = {k: m(images, training=False) for k, m in models.items()}
    results = {}
    for key, m in models.items():
        variables = [v for _, layer in m.named_layers() for v in layer.trainable_variables]
        with tf.GradientTape() as tape:
            logits = m(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        results[key] = (logits, loss, tape.gradient(loss, variables))
    names = [
        f"{name}/{v.name.split(':')[0]}"
        for name, layer in model.named_layers()
        for v in layer.trainable_variables
    ]

    def rel(other: str) -> dict[str, float]:
        return {
            name: _max_rel(a, b)
            for name, a, b in zip(names, results["custom"][2], results[other][2])
        }

    grads, control = rel("builtin"), rel("control")
    worst = max(grads, key=grads.get)
    return {
        "logits_abs_training": float(np.max(np.abs(results["custom"][0] - results["builtin"][0]))),
        "logits_abs_inference": float(np.max(np.abs(inference["custom"] - inference["builtin"]))),
        "loss_abs": float(abs(results["custom"][1] - results["builtin"][1])),
        "grad_rel_max": grads[worst],
        "grad_rel_worst": worst,
        "grad_rel": grads,
        "control_grad_rel": control,
        "control_grad_rel_worst": control[worst],
        "control_logits_abs_training": float(
            np.max(np.abs(results["custom"][0] - results["control"][0]))
        ),
    }


def layer_parity(config: Config, run_dir: str, splits) -> dict:
    """Section 2a for one run: its trained weights, its first training batch."""
    trainer = _open(config, run_dir, splits)
    images, labels = first_batch(config, splits)
    return {
        "norm": config.norm,
        "step": int(trainer.step),
        "batch_size": int(images.shape[0]),
        "layers": norm_layer_rows(trainer.model, images),
        "model": model_rows(trainer.model, images, labels),
    }


# -- section 2b: when do custom and built-in part? ------------------------------------------


class _Stepper:
    """One model's training step, as the Trainer's: cross-entropy, SGD/Adam, lr schedule."""

    def __init__(self, model: CNN, config: Config):
        self.model, self.config = model, config
        self.variables = [v for _, layer in model.named_layers() for v in layer.trainable_variables]
        self.optimizer = make_optimizer(config.optimizer, self.variables, config.momentum)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.run = tf.function(self._run)

    def _run(self, images, labels):
        c = self.config
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, self.variables)
        lr = learning_rate(
            self.step,
            peak=c.learning_rate,
            total_steps=c.train_steps,
            warmup_steps=c.warmup_steps,
            schedule=c.lr_schedule,
        )
        self.optimizer.apply(grads, self.variables, lr)
        self.step.assign_add(1)
        return loss


def _relative_distance(a: list[tf.Variable], b: list[tf.Variable]) -> float:
    """||a - b|| / ||a|| over all parameters together, in float64."""
    num = sum(float(np.sum((x.numpy().astype(np.float64) - y.numpy()) ** 2)) for x, y in zip(a, b))
    den = sum(float(np.sum(x.numpy().astype(np.float64) ** 2)) for x in a)
    return float(np.sqrt(num / den))


def twin_training(config: Config, splits, steps: int) -> dict:
    """Trains three copies in lock step for `steps` steps of the run `config` describes.

    custom and builtin start from identical weights (same seed); "perturbed" is custom with
    every initial weight moved by one float32 ulp (np.nextafter towards +inf): the control that
    shows how fast any rounding-sized difference grows under this training. Returns per step
    the losses and each twin's relative parameter distance to custom.
    """
    info = splits.info
    model_config = config.model_config(info.image_shape, info.num_classes)
    models = {
        "custom": CNN(model_config),
        "builtin": CNN(dataclasses.replace(model_config, impl="builtin")),
        "perturbed": CNN(model_config),
    }
    for v in models["perturbed"].trainable_variables:
        v.assign(np.nextafter(v.numpy(), np.float32(np.inf)))
    steppers = {name: _Stepper(model, config) for name, model in models.items()}
    dataset = data.train_dataset(
        splits.train_x,
        splits.train_y,
        batch_size=config.batch_size,
        seed=config.seed,
        pixel_mean=splits.pixel_mean,
        pixel_std=splits.pixel_std,
        augment=config.augment,
    )
    variables = {n: s.variables for n, s in steppers.items()}
    out = {
        "steps": [0],
        "loss": {name: [None] for name in models},
        "distance": {
            twin: [_relative_distance(variables["custom"], variables[twin])]
            for twin in ("builtin", "perturbed")
        },
    }
    for step, (images, labels) in enumerate(dataset.take(steps), 1):
        losses = {name: float(s.run(images, labels)) for name, s in steppers.items()}
        if not all(np.isfinite(list(losses.values()))):
            break  # a diverging twin ends the comparison; the steps so far stand
        out["steps"].append(step)
        for name, value in losses.items():
            out["loss"][name].append(value)
        for twin in ("builtin", "perturbed"):
            out["distance"][twin].append(_relative_distance(variables["custom"], variables[twin]))
    return out


# -- section 3: batch statistics at test time -----------------------------------------------


def batch_statistics_eval(config: Config, run_dir: str, splits) -> dict:
    """Test accuracy with batch statistics (training mode) vs moving statistics (inference).

    The test set is shuffled once (EVAL_ORDER_SEED) and cut into batches of the run's batch
    size; the remainder is dropped so every batch has exactly that size; both accuracies are
    on those same examples. The moving statistics that training-mode calls update are
    restored afterwards (nothing is saved anyway: the Trainer is read-only).
    """
    trainer = _open(config, run_dir, splits)
    model, b = trainer.model, config.batch_size
    order = np.random.default_rng(EVAL_ORDER_SEED).permutation(len(splits.test_x))
    order = order[: len(order) // b * b]
    x, y = splits.test_x[order], splits.test_y[order]

    def accuracy(batch_size: int, training: bool) -> float:
        predict = tf.function(
            lambda images: tf.argmax(model(images, training=training), -1, output_type=tf.int32)
        )
        dataset = data.eval_dataset(
            x, y, batch_size=batch_size, pixel_mean=splits.pixel_mean, pixel_std=splits.pixel_std
        )
        correct = sum(
            int(tf.reduce_sum(tf.cast(predict(images) == labels, tf.int32)))
            for images, labels in dataset
        )
        return correct / len(y)

    moving = [v for v in model.variables if not v.trainable]
    saved = [v.numpy() for v in moving]
    try:
        inference = accuracy(config.eval_batch_size, training=False)
        batch_stats = accuracy(b, training=True)
    finally:
        for v, value in zip(moving, saved):
            v.assign(value)
    return {
        "step": int(trainer.step),
        "batch_size": b,
        "examples": len(y),
        "inference_accuracy": inference,
        "batch_stats_accuracy": batch_stats,
    }


# -- section 6: cost, measured interleaved ---------------------------------------------------


def throughput(configs: dict[str, Config], splits, rounds: int, steps: int) -> dict:
    """Training images per second of each config's model, all measured in the same rounds.

    Each model takes plain training steps (forward, backward, SGD update; none of the
    trainer's summaries) on one fixed real batch. After 3 warm-up steps each (tracing), every
    round times `steps` steps of each model in a fresh random order, so load from other
    processes on the shared cores falls on all of them alike. Returns per key the median and
    best (fastest round) images per second and the median ms per step.
    """
    info = splits.info
    images, labels = first_batch(next(iter(configs.values())), splits)
    steppers = {}
    for key, config in configs.items():
        steppers[key] = _Stepper(
            CNN(config.model_config(info.image_shape, info.num_classes)), config
        )
        for _ in range(3):
            float(steppers[key].run(images, labels))
    order_rng = np.random.default_rng(0)
    seconds = {key: [] for key in configs}
    for _ in range(rounds):
        for key in order_rng.permutation(list(configs)):
            start = time.perf_counter()
            for _ in range(steps):
                loss = steppers[key].run(images, labels)
            float(loss)  # wait for the last step
            seconds[key].append((time.perf_counter() - start) / steps)
    batch = int(images.shape[0])
    return {
        key: {
            "images_per_sec": batch / float(np.median(t)),
            "best_images_per_sec": batch / min(t),
            "ms_per_step": 1000 * float(np.median(t)),
            "rounds": rounds,
            "steps": steps,
            "batch_size": batch,
        }
        for key, t in seconds.items()
    }


# -- all of them ------------------------------------------------------------------------------


def run_all(
    root: str,
    preset,
    specs: list,
    outcomes: dict,
    splits,
    allow_compute: bool,
    say: Callable[[str], None],
) -> dict:
    """Every analysis the report needs: {"parity": {norm: ...}, "twins": {norm: ...},
    "bn_eval": {run name: ...}, "seconds": total measured, "seconds_now": computed now}."""
    from normlab.report.experiments import SECTION_BATCH, SECTION_IMPL, SECTION_NORMS

    out = {
        "parity": {},
        "twins": {},
        "bn_eval": {},
        "throughput": {},
        "seconds": 0.0,
        "seconds_now": 0.0,
    }
    seed = preset.seeds[0]

    def run(kind, item, name, key, compute):
        entry, computed = cached(root, name, key, compute, allow_compute, say)
        if computed:
            out["seconds_now"] += entry["seconds"]
        out["seconds"] += entry["seconds"]
        out[kind][item] = entry["result"]

    def section1_run(norm):
        return next(
            (
                s
                for s in specs
                if SECTION_NORMS in s.sections
                and s.config.norm == norm
                and s.config.norm_impl == "custom"
                and s.config.seed == seed
            ),
            None,
        )

    for norm in preset.norms:
        spec = section1_run(norm)
        if norm == "none" or spec is None or outcomes[spec.name].status != "complete":
            continue
        key = {"run": spec.name, "step": outcomes[spec.name].metrics.get("step")}
        run(
            "parity",
            norm,
            f"parity-{norm}",
            key,
            lambda spec=spec: layer_parity(spec.config, os.path.join(root, spec.name), splits),
        )
    for norm in preset.builtin_norms:
        spec = section1_run(norm)
        if spec is None:
            continue
        key = {
            "config": identity(spec.config),
            "steps": preset.twin_steps,
            "train_examples": len(splits.train_x),
        }
        run(
            "twins",
            norm,
            f"twins-{norm}",
            key,
            lambda spec=spec: twin_training(spec.config, splits, preset.twin_steps),
        )
    timed = {
        f"{s.config.norm}/{s.config.norm_impl}": s
        for s in specs
        if (SECTION_NORMS in s.sections or SECTION_IMPL in s.sections)
        and s.config.seed == seed
        and s.config.batch_size == preset.reference_batch
    }
    if timed:
        key = {
            "configs": {k: identity(s.config) for k, s in sorted(timed.items())},
            "rounds": preset.cost_rounds,
            "steps": preset.cost_steps,
        }
        run(
            "throughput",
            "all",
            "throughput",
            key,
            lambda: throughput(
                {k: s.config for k, s in sorted(timed.items())},
                splits,
                preset.cost_rounds,
                preset.cost_steps,
            ),
        )
    for spec in specs:
        if SECTION_BATCH not in spec.sections or spec.config.norm != "batch":
            continue
        if outcomes[spec.name].status != "complete":
            continue
        key = {"run": spec.name, "step": outcomes[spec.name].metrics.get("step")}
        run(
            "bn_eval",
            spec.name,
            f"bn-eval-{spec.name}",
            key,
            lambda spec=spec: batch_statistics_eval(
                spec.config, os.path.join(root, spec.name), splits
            ),
        )
    return out
