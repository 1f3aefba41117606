"""normlab's Keras BatchNormalization(synchronized=True) in model.fit on 2 replicas.

    python -m tests.keras_mirrored_check [--json PATH]

Runs in a process of its own: the two replicas are two logical CPU devices, which must be
configured before the TensorFlow runtime starts (tests/distributed_check.py does the same for
the core functions). The same Sequential CNN (tests/keras_fixtures.py) with the same initial
weights is trained by model.fit for 3 steps of a global batch of 64 Fashion-MNIST images, on
one device and under MirroredStrategy over 2 logical CPUs (32 images per replica), and the
weights and moving statistics are compared; test_keras_training.py holds the tolerances.
With synchronized=False each replica normalizes with its own half's statistics, which must
show (the comparison can fail). tests/distributed_check.py runs `check_keras_fit` in its
process with the other 2-replica measurements, so the suite starts that process once.
"""

from __future__ import annotations

import argparse
import json
import sys

import keras
import numpy as np
import tensorflow as tf

from normlab import models
from tests.distributed_check import configure_devices
from tests.keras_fixtures import cnn, fashion_mnist

STEPS, GLOBAL_BATCH = 3, 64


def _trained(strategy, synchronized: bool, initial, x, y) -> keras.Model:
    """The CNN with normlab's batch norm, built in `strategy`'s scope, after model.fit."""
    with strategy.scope():
        model = cnn(models, "batch", synchronized=synchronized)
        model.set_weights(initial)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    return model


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _compare(model, reference, key: str) -> dict:
    pairs = list(zip(model.weights, reference.weights))
    moving = [(a, b) for a, b in pairs if "moving" in a.path]
    trainable = [(a, b) for a, b in pairs if a.trainable]
    return {
        f"{key}/weights_rel": max(_rel(a.numpy(), b.numpy()) for a, b in trainable),
        f"{key}/moving_rel": max(_rel(a.numpy(), b.numpy()) for a, b in moving),
    }


def check_keras_fit(mirrored: tf.distribute.Strategy) -> dict:
    """The measurements, keyed keras_fit/<synchronized|local>/<what>; `mirrored` has 2
    replicas."""
    x, y = fashion_mnist(STEPS * GLOBAL_BATCH, offset=1000)
    initial = cnn(models, "batch").get_weights()
    one_device = _trained(tf.distribute.get_strategy(), False, initial, x, y)
    results = {"keras_fit/replicas": float(mirrored.num_replicas_in_sync)}
    for synchronized in (True, False):
        model = _trained(mirrored, synchronized, initial, x, y)
        key = "keras_fit/" + ("synchronized" if synchronized else "local")
        results.update(_compare(model, one_device, key))
        # Every replica holds the same moving statistics, bit for bit.
        copies = [w.value.values for w in model.weights if "moving" in w.path]
        results[f"{key}/moving_copies_differ"] = float(
            any(not np.array_equal(a.numpy(), b.numpy()) for a, b in copies)
        )
        predictions = model.predict(x[:GLOBAL_BATCH], batch_size=GLOBAL_BATCH, verbose=0)
        expected = one_device.predict(x[:GLOBAL_BATCH], batch_size=GLOBAL_BATCH, verbose=0)
        results[f"{key}/predictions_rel"] = _rel(predictions, expected)
    return results


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    configure_devices(2)
    results = check_keras_fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    for key, value in results.items():
        print(f"{key:<36}{value:.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
