"""Keras model.fit speed: the same CNN with normlab's Keras layers and with Keras' own.

    python -m bench.keras_fit                        # every norm, 4000 images, 9 rounds (~5 min)
    python -m bench.keras_fit --norms batch --rounds 15
    python -m bench.keras_fit --layers               # each norm layer alone (~1 min)

For each norm the same Keras CNN (conv 3x3 32 - norm - ReLU - maxpool - conv 3x3 64 - norm -
ReLU - maxpool - dense 128 - norm - ReLU - dense 10) is built twice, once with
normlab.models' layer and once with keras.layers' layer of the same name and arguments, with
the same initial weights, and trained with `model.fit` (SGD, batch 128) on the same real
Fashion-MNIST images; 4000 of them by default, which, like Fashion-MNIST's 60000, do not divide
into whole batches, so model.fit traces its step with a batch of unknown size, as it does for
most users. The same CNN without norm layers is the baseline.

Method: every model is compiled and warmed up first. Each round then times one epoch of every
model (its training loop, from on_train_begin to on_train_end: every step and its data, not
model.fit's set-up around them): the norms in a fresh random order, and for each norm Keras'
and normlab's models back to back, in random order, so the two see the same machine load.
Reported per model: median images/s (wall clock) and median CPU seconds per epoch (this
process, all threads); per norm:
the median over rounds of the ratio normlab images/s / Keras images/s (above 1: normlab's layer
trains faster), with the CPU model and the load average before and after.

`--layers`: each norm layer alone, forward and backward (the gradients of sum(y * dy) with
respect to x and the weights, in training mode) at the three shapes the CNN's norms see, in a
tf.function whose batch size is unknown at trace time as in model.fit (`--known_batch`: traced
with the batch size), normlab's and Keras' layers interleaved in random order; median ms and
the ratio normlab / Keras time (below 1: normlab's is faster).

Not part of the test suite: timings on a shared machine are too noisy to assert.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
import keras
import numpy as np
import tensorflow as tf

from normlab import data, machine, models

# name -> (layer class name, arguments for the conv layers, arguments for the dense layer)
NORMS = {
    "batch": ("BatchNormalization", {}, {}),
    "layer": ("LayerNormalization", {}, {}),  # Keras' default axis=-1: per position over C
    "layer_all_axes": ("LayerNormalization", {"axis": [1, 2, 3]}, {"axis": [1]}),
    "group": ("GroupNormalization", {"groups": 8}, {"groups": 8}),
    "rms": ("RMSNormalization", {}, {}),
}


def compiled_batch_norm_cnn(executions: int) -> keras.Model:
    """Keras' own benchmark CNN with BatchNormalization, compiled as bench.loop and bench.profile
    compare it with normlab's loop: SGD 0.01 with momentum 0.9, `executions` steps per call."""
    model = build(keras.layers, "batch")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=executions,
    )
    return model


def build(namespace, norm: str, seed: int = 0) -> keras.Model:
    """The benchmark CNN with the norm layers taken from `namespace` (keras.layers or models)."""
    layer_name, conv_args, dense_args = NORMS[norm]
    norm_layer = getattr(namespace, layer_name)
    init = keras.initializers.HeNormal(seed=seed)
    layers = [keras.Input((28, 28, 1))]
    for width in (32, 64):
        layers += [
            keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init),
            norm_layer(**conv_args),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
        ]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(128, use_bias=False, kernel_initializer=init),
        norm_layer(**dense_args),
        keras.layers.ReLU(),
        keras.layers.Dense(10, kernel_initializer=init),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fashion_mnist(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` training images, standardized as the trainer does, and labels."""
    splits = data.load("fashion_mnist", None, validation_size=0)
    images = splits.train_x[:count].astype(np.float32) / 255.0 - splits.pixel_mean
    return images / splits.pixel_std, splits.train_y[:count]


class _NoNorm:
    """A namespace whose every norm layer is the identity: the baseline CNN."""

    def __getattr__(self, name):
        return lambda **kwargs: keras.layers.Identity()


class _LoopTimer(keras.callbacks.Callback):
    """Wall and CPU time from the start to the end of model.fit's training loop."""

    def on_train_begin(self, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_train_end(self, logs=None):
        self.wall = time.perf_counter() - self.start[0]
        self.cpu = time.process_time() - self.start[1]


def _epoch(model, x, y, fit) -> tuple[float, float]:
    """(images/s, CPU seconds) of one model.fit epoch's training loop.

    Timed from on_train_begin to on_train_end: model.fit's set-up and tear-down around the
    loop (wrapping the arrays in a tf.data pipeline, ...) is the same for every model and
    intermittently took an extra ~0.5 s here, which would only add noise to the ratios.
    """
    timer = _LoopTimer()
    model.fit(x, y, callbacks=[timer], **fit)
    return len(x) / timer.wall, timer.cpu


def run(args) -> dict:
    x, y = fashion_mnist(args.images)
    candidates = {"none": build(_NoNorm(), "batch")}
    for norm in args.norms:
        reference = build(keras.layers, norm)
        ours = build(models, norm)
        ours.set_weights(reference.get_weights())
        candidates[f"{norm}/keras"] = reference
        candidates[f"{norm}/normlab"] = ours
    fit = {"batch_size": args.batch_size, "epochs": 1, "verbose": 0, "shuffle": False}
    # Trace, compile and warm up on full batches and on a last batch of the timed epochs' size
    # (XLA compiles the closed forms once per shape).
    warm = 2 * args.batch_size + len(x) % args.batch_size
    for model in candidates.values():
        model.fit(x[:warm], y[:warm], **fit)
    load_before = os.getloadavg()
    rates = {name: [] for name in candidates}
    cpu = {name: [] for name in candidates}
    ratios = {norm: [] for norm in args.norms}
    rng = random.Random(0)
    for _ in range(args.rounds):
        groups = [["none"]] + [[f"{n}/keras", f"{n}/normlab"] for n in args.norms]
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
            for name in group:
                rate, seconds = _epoch(candidates[name], x, y, fit)
                rates[name].append(rate)
                cpu[name].append(seconds)
        for norm in args.norms:
            ratios[norm].append(rates[f"{norm}/normlab"][-1] / rates[f"{norm}/keras"][-1])
    return {
        "cpu": machine.cpu_model(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "images": len(x),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "images_per_sec": {name: statistics.median(r) for name, r in rates.items()},
        "cpu_seconds_per_epoch": {name: statistics.median(c) for name, c in cpu.items()},
        "ratio_normlab_over_keras": {norm: statistics.median(r) for norm, r in ratios.items()},
        "samples_images_per_sec": rates,
        "samples_ratio": ratios,
    }


LAYER_SHAPES = ((128, 28, 28, 32), (128, 14, 14, 64), (128, 128))


def _layer_step(namespace, norm: str, shape, known_batch: bool):
    """A tf.function computing one norm layer's forward and backward on fixed inputs."""
    layer_name, conv_args, dense_args = NORMS[norm]
    layer = getattr(namespace, layer_name)(**(dense_args if len(shape) == 2 else conv_args))
    layer.build(shape)
    x = tf.random.stateless_normal(shape, seed=[1, 2])
    dy = tf.random.stateless_normal(shape, seed=[3, 4])
    spec = tf.TensorSpec(shape if known_batch else (None, *shape[1:]))

    @tf.function(input_signature=[spec])
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy)

    return lambda: step(x)[0].numpy()


def run_layers(args) -> dict:
    steps = {}
    for norm in args.norms:
        for shape in LAYER_SHAPES:
            for impl, namespace in (("keras", keras.layers), ("normlab", models)):
                steps[(norm, shape, impl)] = _layer_step(namespace, norm, shape, args.known_batch)
    for step in steps.values():  # trace, compile, warm up
        for _ in range(3):
            step()
    samples = {key: [] for key in steps}
    rng = random.Random(0)
    for _ in range(args.rounds * 3):
        order = list(steps)
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            steps[key]()
            samples[key].append(time.perf_counter() - start)
    ms = {key: 1e3 * statistics.median(s) for key, s in samples.items()}
    rows = [
        {
            "norm": norm,
            "shape": list(shape),
            "keras_ms": ms[(norm, shape, "keras")],
            "normlab_ms": ms[(norm, shape, "normlab")],
            "ratio": ms[(norm, shape, "normlab")] / ms[(norm, shape, "keras")],
        }
        for norm in args.norms
        for shape in LAYER_SHAPES
    ]
    return {"cpu": machine.cpu_model(), "known_batch": args.known_batch, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument(
        "--images",
        type=int,
        default=4000,
        help="Fashion-MNIST images per epoch (not a multiple of the batch)",
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--layers", action="store_true", help="time each norm layer alone")
    parser.add_argument("--known_batch", action="store_true", help="--layers: trace with it")
    parser.add_argument("--out", default="bench/results/keras_fit.json")
    args = parser.parse_args(argv)
    if args.layers:
        result = run_layers(args)
        batch = "known" if args.known_batch else "unknown (as model.fit traces)"
        print(f"one norm layer, forward + backward, batch size {batch}; CPU: {result['cpu']}")
        print(f"{'norm':<16}{'shape':<20}{'keras ms':>10}{'normlab ms':>12}{'ratio':>8}")
        for row in result["rows"]:
            shape = "x".join(map(str, row["shape"]))
            print(
                f"{row['norm']:<16}{shape:<20}{row['keras_ms']:>10.2f}"
                f"{row['normlab_ms']:>12.2f}{row['ratio']:>8.2f}"
            )
        return _write(result, args.out.replace(".json", "_layers.json"))
    result = run(args)
    load = result["load_average_before_after"]
    print(
        f"model.fit, {result['images']} Fashion-MNIST images per epoch, batch "
        f"{args.batch_size}, medians of {args.rounds} rounds; CPU: {result['cpu']} "
        f"({result['cpus']} cores), TensorFlow {result['tensorflow']}, Keras {result['keras']}, "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after"
    )
    rate, cpu = result["images_per_sec"], result["cpu_seconds_per_epoch"]
    print(f"no norm: {rate['none']:.0f} images/s, {cpu['none']:.2f} CPU s/epoch")
    header = ("norm", "keras img/s", "normlab img/s", "keras CPU s", "normlab CPU s", "ratio")
    print(f"{header[0]:<16}" + "".join(f"{h:>15}" for h in header[1:]))
    for norm, ratio in result["ratio_normlab_over_keras"].items():
        keras_name, ours = f"{norm}/keras", f"{norm}/normlab"
        print(
            f"{norm:<16}{rate[keras_name]:>15.0f}{rate[ours]:>15.0f}"
            f"{cpu[keras_name]:>15.2f}{cpu[ours]:>15.2f}{ratio:>15.2f}"
        )
    return _write(result, args.out)


def _write(result: dict, path: str) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
