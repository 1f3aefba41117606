"""Keras model.fit speed: the same CNN with normlab's Keras layers and with Keras' own.

    python -m bench.keras_fit                        # every norm, 4096 images, 7 rounds
    python -m bench.keras_fit --norms batch --rounds 11

For each norm the same Keras CNN (conv 3x3 32 - norm - ReLU - maxpool - conv 3x3 64 - norm -
ReLU - maxpool - dense 128 - norm - ReLU - dense 10) is built twice, once with
normlab.models' layer and once with keras.layers' layer of the same name and arguments, with
the same initial weights, and trained with `model.fit` (SGD, batch 128) on the same real
Fashion-MNIST subset. Every model is compiled and warmed up first; then each round times one
epoch of every model, in a fresh random order, so machine noise hits all alike. Reported:
median images/s per model and the ratio normlab / Keras from the same run (above 1: normlab's
layer trains faster), with the CPU model. Not part of the test suite: timings on a shared
machine are too noisy to assert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

from normlab.trainer.quiet import import_tensorflow

tf = import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from normlab import data, models  # noqa: E402

# name -> (layer class name, arguments for the conv layers, arguments for the dense layer)
NORMS = {
    "batch": ("BatchNormalization", {}, {}),
    "layer": ("LayerNormalization", {}, {}),  # Keras' default axis=-1: per position over C
    "layer_all_axes": ("LayerNormalization", {"axis": [1, 2, 3]}, {"axis": [1]}),
    "group": ("GroupNormalization", {"groups": 8}, {"groups": 8}),
    "rms": ("RMSNormalization", {}, {}),
}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def run(args) -> dict:
    x, y = fashion_mnist(args.images)
    candidates = {}
    for norm in args.norms:
        reference = build(keras.layers, norm)
        ours = build(models, norm)
        ours.set_weights(reference.get_weights())
        candidates[f"{norm}/keras"] = reference
        candidates[f"{norm}/normlab"] = ours
    fit = {"batch_size": args.batch_size, "epochs": 1, "verbose": 0, "shuffle": False}
    for model in candidates.values():  # trace, compile, warm up
        model.fit(x[: 4 * args.batch_size], y[: 4 * args.batch_size], **fit)
    samples = {name: [] for name in candidates}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(candidates)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            candidates[name].fit(x, y, **fit)
            samples[name].append(len(x) / (time.perf_counter() - start))
    rows = {name: statistics.median(s) for name, s in samples.items()}
    ratios = {norm: rows[f"{norm}/normlab"] / rows[f"{norm}/keras"] for norm in args.norms}
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "images": len(x),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "images_per_sec": rows,
        "samples": samples,
        "ratio_normlab_over_keras": ratios,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument("--images", type=int, default=4096, help="Fashion-MNIST images per epoch")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="bench/results/keras_fit.json")
    args = parser.parse_args(argv)
    result = run(args)
    print(
        f"model.fit, {result['images']} Fashion-MNIST images per epoch, batch "
        f"{args.batch_size}, median of {args.rounds} interleaved epochs; CPU: {result['cpu']} "
        f"({result['cpus']} cores), TensorFlow {result['tensorflow']}, Keras {result['keras']}"
    )
    print(f"{'norm':<16}{'keras img/s':>12}{'normlab img/s':>15}{'normlab/keras':>15}")
    for norm, ratio in result["ratio_normlab_over_keras"].items():
        keras_rate = result["images_per_sec"][f"{norm}/keras"]
        ours = result["images_per_sec"][f"{norm}/normlab"]
        print(f"{norm:<16}{keras_rate:>12.0f}{ours:>15.0f}{ratio:>15.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
