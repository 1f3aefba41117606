"""What the trainer does not record, computed from runs and cached under `<root>/analysis/`.

* `layer_parity`: custom vs built-in on the same trained weights and the same real batch, at
  every norm layer (core.parity.compare, and each side's distance to the float64 reference of
  core/reference.py) and for the whole model (with a one-ulp control).
* `twin_training`: custom, built-in and a one-ulp-perturbed custom model trained in lock step
  by the trainer's own step from the same initial weights on the same batches.
* `batch_statistics_eval`: a batch-norm run's test accuracy with the statistics of test batches
  of its training batch size (training mode) vs its moving statistics (inference).
* `throughput`: the trainer's step for several models, timed interleaved in the same rounds.

Each result is a JSON file holding the key of what it was computed from; a stale or missing one
is recomputed (or, under --report_only, reported as missing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from normlab import data
from normlab.core import parity, registry
from normlab.models import build_model
from normlab.report.suite import read_json, write_json
from normlab.trainer import optim, steps, summaries
from normlab.trainer.config import Config
from normlab.trainer.errors import UsageError

ANALYSIS_DIR = "analysis"
# Part of every cache key: bump it when an analysis computes something new.
ANALYSIS_VERSION = 3
# The test-set order of the batch-statistics evaluation: random batches, not the file order.
EVAL_ORDER_SEED = 1234


def identity(config: Config) -> dict:
    """A config in a cache key: its experiment-defining fields (bookkeeping flags do not
    invalidate a result), plus the data directory."""
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
        if not f.metadata["resumable"] or f.name == "data_dir"
    }


def cached(root, name, key, compute, allow_compute, say) -> tuple[dict, bool]:
    """The analysis `name` for `key`, from its file when the key matches, else computed:
    ({"key", "seconds", "result"}, computed now?). UsageError if it must be computed but may
    not (--report_only)."""
    key = json.loads(json.dumps({**key, "version": ANALYSIS_VERSION}))
    path = os.path.join(root, ANALYSIS_DIR, f"{name}.json")
    saved = read_json(path)
    if saved and saved.get("key") == key:
        return saved, False
    if not allow_compute:
        raise UsageError(
            f"analysis {name} is {'stale' if saved else 'missing'} in {root}/{ANALYSIS_DIR}. "
            "Run report.py without --report_only to compute it."
        )
    say(f"analysis {name} ...")
    start = time.perf_counter()
    entry = {"key": key, "result": compute()}
    entry["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, entry)
    say(f"analysis {name}: {entry['seconds']:.1f} s")
    return entry, True


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


def _restored(config: Config, run_dir: str, splits):
    """The run's latest checkpoint in a read-only Trainer (writes nothing to run_dir)."""
    from normlab.trainer.trainer import Trainer

    return Trainer(config, run_dir, splits=splits, log=lambda _: None, read_only=True)


# -- custom vs built-in on the same weights and batch -------------------------------------------


def _row(layer: str, norm: registry.Norm, case: parity.Case, inputs: dict, eps, groups) -> dict:
    """core.parity.compare on one layer's inputs, plus each side's max abs error against the
    float64 reference on the same inputs."""
    result = parity.compare(case, inputs)
    values = list(inputs.values())
    numpy_values = [np.asarray(v, np.float64) for v in values]
    exact = norm.bind(norm.reference, eps=eps, groups=groups)(*numpy_values)
    return {
        "layer": layer,
        "builtin": result.builtin_name,
        "shape": list(result.shape),
        "forward_abs": result.forward_abs,
        "forward_rel": result.forward_rel,
        "grad_rel": dict(result.grad_rel),
        "custom_err64": float(np.max(np.abs(np.asarray(case.custom(*values)) - exact))),
        "builtin_err64": float(np.max(np.abs(np.asarray(case.reference(*values)) - exact))),
    }


def norm_layer_rows(model, config: Config, images: tf.Tensor) -> list[dict]:
    """Custom vs the model's built-in at every norm of `model`, on that norm's real input
    (the custom network's activations, tapped by `forward`); weight norm compares kernels."""
    norm = registry.get(config.norm)
    rows = []
    if norm.target == registry.KERNEL:
        case = parity.cases_of(norm)[0]
        for name, layer in model.named_layers():
            if getattr(layer, "kernel_norm", None) is not None:
                inputs = {"v": tf.convert_to_tensor(layer.v), "g": tf.convert_to_tensor(layer.g)}
                rows.append(_row(name, norm, case, inputs, None, None))
        return rows
    _, taps = model.forward(images, training=True, tap=True)
    for name, module in model.named_layers():
        if not name.endswith("_norm"):
            continue
        groups = getattr(module, "groups", None) if norm.grouped else None
        eps = config.norm_eps
        case = parity.cases_of(norm, eps=eps, groups=groups, backward=config.norm_backward)[0]
        inputs = {"x": taps[f"{name[: -len('_norm')]}/pre"]}
        inputs.update({p.name: tf.convert_to_tensor(getattr(module, p.name)) for p in norm.params})
        rows.append(_row(name, norm, case, inputs, eps, groups))
    return rows


def _copy(model, config: Config, impl: str, one_ulp: bool = False):
    """A new model holding `model`'s weights, with another impl or every weight one ulp up."""
    other = build_model(dataclasses.replace(config, norm_impl=impl))
    for mine, theirs in zip(model.variables, other.variables):
        theirs.assign(np.nextafter(mine.numpy(), np.float32(np.inf)) if one_ulp else mine)
    return other


def model_rows(model, config: Config, images: tf.Tensor, labels: tf.Tensor) -> dict:
    """The whole custom model vs a built-in model holding the same weights, on one batch.

    Gradient differences are per variable, max |custom - built-in| / max |built-in|. A variable
    whose gradient is a small sum of large cancelling terms has a large relative rounding error
    whatever the implementation; the control measures that: the same difference between custom
    and custom with every weight moved by one float32 ulp.
    """
    models = {
        "custom": model,
        "builtin": _copy(model, config, "builtin"),
        "control": _copy(model, config, "custom", one_ulp=True),
    }
    inference = {k: m(images, training=False) for k, m in models.items()}  # before BN moves
    results = {}
    for key, m in models.items():
        named = steps.layer_variables(m)
        with tf.GradientTape() as tape:
            logits = m(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        results[key] = (logits, loss, tape.gradient(loss, [v for _, _, v in named]))
    names = [f"{layer}/{name}" for layer, name, _ in steps.layer_variables(model)]

    def rel(other: str) -> dict[str, float]:
        pairs = zip(names, results["custom"][2], results[other][2])
        return {name: parity.max_rel(a, b) for name, a, b in pairs}

    grads, control = rel("builtin"), rel("control")
    worst = max(grads, key=grads.get)
    return {
        "logits_abs_training": float(np.max(np.abs(results["custom"][0] - results["builtin"][0]))),
        "logits_abs_inference": float(np.max(np.abs(inference["custom"] - inference["builtin"]))),
        "loss_abs": float(abs(results["custom"][1] - results["builtin"][1])),
        "grad_rel_max": grads[worst],
        "grad_rel_worst": worst,
        "control_grad_rel_worst": control[worst],
    }


def layer_parity(config: Config, run_dir: str, splits) -> dict:
    """For one custom run: its trained weights, its first training batch."""
    trainer = _restored(config, run_dir, splits)
    images, labels = first_batch(config, splits)
    return {
        "norm": config.norm,
        "step": trainer.current_step,
        "layers": norm_layer_rows(trainer.model, config, images),
        "model": model_rows(trainer.model, config, images, labels),
    }


# -- trained side by side ------------------------------------------------------------------------


def _step_for(model, config: Config) -> steps.TrainStep:
    """The trainer's own compiled step (loss, optimizer, schedule) for a model outside a run."""
    named = steps.layer_variables(model)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    optimizer = optim.make_optimizer(config.optimizer, [v for _, _, v in named], config.momentum)

    def lr(s):
        return optim.learning_rate(
            s,
            peak=config.learning_rate,
            total_steps=config.train_steps,
            warmup_steps=config.warmup_steps,
            schedule=config.lr_schedule,
        )

    return steps.TrainStep(model, optimizer, step, lr, config.batch_size)


def _relative_distance(a: list, b: list) -> float:
    """||a - b|| / ||a|| over all parameters together, in float64."""
    a = [x.numpy().astype(np.float64) for x in a]
    b = [y.numpy().astype(np.float64) for y in b]
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b))
    return float(np.sqrt(num / sum(float(np.sum(x**2)) for x in a)))


def twin_training(config: Config, splits, n_steps: int) -> dict:
    """Three copies of the run `config` trained in lock step for `n_steps` steps by the
    trainer's step: custom, built-in (identical initial weights) and "perturbed", custom with
    every initial weight moved by one float32 ulp, the control that shows how fast any
    rounding-sized difference grows under this training. Per step: losses and each twin's
    relative parameter distance to custom."""
    info = splits.info
    models = {
        "custom": build_model(config, info.image_shape, info.num_classes),
        "builtin": build_model(
            dataclasses.replace(config, norm_impl="builtin"), info.image_shape, info.num_classes
        ),
        "perturbed": build_model(config, info.image_shape, info.num_classes),
    }
    for v in models["perturbed"].trainable_variables:
        v.assign(np.nextafter(v.numpy(), np.float32(np.inf)))
    runners = {name: _step_for(model, config) for name, model in models.items()}
    variables = {n: r.variables for n, r in runners.items()}
    out = {"steps": [0], "loss": {n: [None] for n in models}, "distance": {}}
    for twin in ("builtin", "perturbed"):
        out["distance"][twin] = [_relative_distance(variables["custom"], variables[twin])]
    for step, (images, labels) in enumerate(first_batches(config, splits, n_steps), 1):
        losses = {n: float(r(images, labels)[summaries.LOSS]) for n, r in runners.items()}
        if not all(np.isfinite(list(losses.values()))):
            break  # a diverging twin ends the comparison; the steps so far stand
        out["steps"].append(step)
        for name, value in losses.items():
            out["loss"][name].append(value)
        for twin in ("builtin", "perturbed"):
            out["distance"][twin].append(_relative_distance(variables["custom"], variables[twin]))
    return out


def first_batches(config: Config, splits, n: int):
    """The run's first n training batches."""
    return data.train_dataset(
        splits.train_x,
        splits.train_y,
        batch_size=config.batch_size,
        seed=config.seed,
        pixel_mean=splits.pixel_mean,
        pixel_std=splits.pixel_std,
        augment=config.augment,
    ).take(n)


# -- batch statistics at test time --------------------------------------------------------------


def batch_statistics_eval(config: Config, run_dir: str, splits) -> dict:
    """Test accuracy with batch statistics (training mode) vs moving statistics (inference).

    The test set is shuffled once (EVAL_ORDER_SEED) and cut into batches of the run's batch
    size; the remainder is dropped so every batch has exactly that size; both accuracies are on
    those same examples. The moving statistics that training-mode calls update are restored
    afterwards (nothing is saved anyway: the Trainer is read-only).
    """
    trainer = _restored(config, run_dir, splits)
    model, b = trainer.model, config.batch_size
    order = np.random.default_rng(EVAL_ORDER_SEED).permutation(len(splits.test_x))
    order = order[: len(order) // b * b]
    x, y = splits.test_x[order], splits.test_y[order]

    def accuracy(batch_size: int, training: bool) -> float:
        predict = tf.function(
            lambda images: tf.argmax(model(images, training=training), -1, output_type=tf.int32),
            autograph=False,
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
    return {"examples": len(y), "inference_accuracy": inference, "batch_stats_accuracy": batch_stats}


# -- cost, measured interleaved -----------------------------------------------------------------


def throughput(configs: dict[str, Config], splits, rounds: int, n_steps: int) -> dict:
    """Milliseconds per training step of each config's model, all measured in the same rounds.

    Each model takes the trainer's own step (forward, backward, update; no summaries) on one
    fixed real batch. After 3 warm-up steps each (tracing), every round times `n_steps` steps of
    each model in a fresh random order, so load from other processes on the shared cores falls
    on all of them alike. Returns per key the per-round ms per step and the batch size.
    """
    info = splits.info
    runners, batch = {}, None
    for key, config in configs.items():
        batch = first_batch(config, splits)
        runners[key] = (_step_for(build_model(config, info.image_shape, info.num_classes), config), batch)
        for _ in range(3):
            float(runners[key][0](*batch)[summaries.LOSS])
    order = np.random.default_rng(0)
    ms = {key: [] for key in configs}
    for _ in range(rounds):
        for key in order.permutation(list(configs)):
            runner, (images, labels) = runners[key]
            start = time.perf_counter()
            for _ in range(n_steps):
                metrics = runner(images, labels)
            float(metrics[summaries.LOSS])  # wait for the last step
            ms[key].append(1000 * (time.perf_counter() - start) / n_steps)
    return {key: {"ms_per_step": t, "batch_size": configs[key].batch_size} for key, t in ms.items()}


def run_all(root, preset, specs, outcomes, splits, allow_compute: bool, say: Callable) -> dict:
    """Every analysis the report needs: {"parity": {norm: ...}, "twins": {norm: ...},
    "bn_eval": {run name: ...}, "throughput": {...}, "seconds": total measured, "seconds_now":
    computed in this invocation}."""
    from normlab.report.suite import COMPLETE

    out = {"parity": {}, "twins": {}, "bn_eval": {}, "throughput": {}, "parity_table": {},
           "seconds": 0.0, "seconds_now": 0.0}

    def run(kind, item, name, key, compute):
        entry, computed = cached(root, name, key, compute, allow_compute, say)
        out["seconds"] += entry["seconds"]
        out["seconds_now"] += entry["seconds"] if computed else 0.0
        out[kind][item] = entry["result"]

    done = [s for s in specs if outcomes[s.name].status == COMPLETE]
    first = preset.seeds[0]
    for spec in done:
        c = spec.config
        if "cnn" in spec.sections and c.seed == first and c.norm_impl == "custom" and c.norm != "none":
            run("parity", c.norm, f"parity-{c.norm}", {"config": identity(c)},
                lambda c=c, s=spec: layer_parity(c, os.path.join(root, s.name), splits))
            if c.norm in preset.builtin_norms:
                run("twins", c.norm, f"twins-{c.norm}", {"config": identity(c), "steps": preset.twin_steps},
                    lambda c=c: twin_training(c, splits, preset.twin_steps))
        if c.norm == "batch" and {"batch", "lstm_batch"} & set(spec.sections):
            run("bn_eval", spec.name, f"bn-eval-{spec.name}", {"config": identity(c)},
                lambda c=c, s=spec: batch_statistics_eval(c, os.path.join(root, s.name), splits))
    run("parity_table", "rows", "parity-table", {"tf": tf.__version__},
        lambda: [dataclasses.asdict(r) for r in parity.table()])
    configs = {}
    for spec in specs:
        c = spec.config
        sections = {"cnn", "impl", "lstm"} & set(spec.sections)
        if sections and c.seed == first and c.batch_size == preset.reference_batch:
            configs[f"{c.arch}/{c.norm}/{c.norm_impl}"] = c
    if configs:
        key = {"configs": {k: identity(c) for k, c in configs.items()},
               "rounds": preset.cost_rounds, "steps": preset.cost_steps}
        run("throughput", "all", "throughput", key,
            lambda: throughput(configs, splits, preset.cost_rounds, preset.cost_steps))
    return out
