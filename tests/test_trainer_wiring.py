"""The trainer's wiring: every setting reaches the part it configures, shown by its effect.

Each test builds a Trainer from a Config and checks what the setting changes, computed
independently (NumPy, the papers' formulas), rather than an attribute the wiring sets: a flag
passed to the wrong place (SGD's momentum as batch norm's, say) or an effect skipped while
still logged must fail here.
"""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from normlab.trainer import steps, summaries
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer
from normlab.core import reference as ref
from tests.fixtures import tiny_splits
from tests.numerics import assert_close

SMALL = dict(
    batch_size=32,
    train_steps=12,
    eval_every=6,
    checkpoint_every=6,
    log_every=4,
    summary_every=3,
    histogram_every=6,
    eval_batch_size=50,
    widths=(8, 16),
    dense_units=32,
)


def _trainer(tmp_path, **overrides) -> Trainer:
    config = Config(**{**SMALL, **overrides})
    return Trainer(config, str(tmp_path / "run"), splits=tiny_splits(), log=lambda _: None)


def _first_batch(trainer: Trainer):
    from normlab import data

    s, c = trainer.splits, trainer.config
    dataset = data.train_dataset(
        s.train_x,
        s.train_y,
        batch_size=c.batch_size,
        seed=c.seed,
        pixel_mean=s.pixel_mean,
        pixel_std=s.pixel_std,
        augment=c.augment,
    )
    return next(iter(dataset))


def _standardized(trainer: Trainer, images: np.ndarray) -> tf.Tensor:
    s = trainer.splits
    return tf.constant((images.astype(np.float32) / 255.0 - s.pixel_mean) / s.pixel_std)


# -- evaluation --------------------------------------------------------------------------------


def test_evaluation_equals_an_independent_count(tmp_path):
    """Loss, accuracy and per-class accuracy of evaluate() against NumPy over the model's
    logits of the whole test split (float64 cross-entropy, counted by hand)."""
    trainer = _trainer(tmp_path, eval_batch_size=24)  # 64 test examples: a partial last batch
    trainer.train()
    result = trainer.evaluate("test")
    logits = trainer.model(_standardized(trainer, trainer.splits.test_x), training=False)
    logits = np.asarray(logits, np.float64)
    labels = trainer.splits.test_y
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    loss = -log_softmax[np.arange(len(labels)), labels].mean()
    predictions = logits.argmax(1)
    assert result["examples"] == len(labels)
    assert math.isclose(result["loss"], loss, rel_tol=1e-5), (result["loss"], loss)
    assert result["accuracy"] == np.mean(predictions == labels)
    for k, acc in enumerate(result["per_class_accuracy"]):
        assert acc == np.mean(predictions[labels == k] == k)
    np.testing.assert_array_equal(result["predictions"], predictions)


# -- the model's settings ----------------------------------------------------------------------


def test_bn_momentum_reaches_the_moving_averages(tmp_path):
    """One step: moving_mean = m * 0 + (1 - m) * the batch mean of conv1's output, with
    m = --bn_momentum (not --momentum, the optimizer's)."""
    trainer = _trainer(tmp_path, norm="batch", bn_momentum=0.7, momentum=0.9)
    images, labels = _first_batch(trainer)
    conv1 = np.asarray(trainer.model.convs[0](images), np.float64)  # before the step
    trainer.train_step(images, labels)
    expected = 0.3 * conv1.mean(axis=(0, 1, 2))
    assert_close(trainer.model.conv_norms[0].moving_mean, expected, tf.float32)


@pytest.mark.parametrize("norm", ["batch", "layer", "group", "rms"])
def test_norm_eps_and_groups_reach_every_norm(tmp_path, norm):
    """A module's training-mode output equals the NumPy reference with --norm_eps (and group
    norm's --groups); a wrong eps or group count changes the output far beyond rounding."""
    trainer = _trainer(tmp_path, norm=norm, norm_eps=0.3, groups=4)
    x = tf.constant(np.random.default_rng(0).normal(0.5, 0.4, (6, 5, 5, 8)), tf.float32)
    module = trainer.model.conv_norms[0]
    x64 = np.asarray(x, np.float64)
    expected = {
        "batch": lambda: ref.batch_norm(x64, 1.0, 0.0, 0.3),
        "layer": lambda: ref.layer_norm(x64, 1.0, 0.0, 0.3),
        "group": lambda: ref.group_norm(x64, 1.0, 0.0, 4, 0.3),
        "rms": lambda: ref.rms_norm(x64, 1.0, 0.3),
    }[norm]()
    assert_close(module(x, training=True), expected, tf.float32, norm)


def test_wn_data_init_standardizes_the_first_batch(tmp_path):
    """--wn_init=data, by its effect: on the first training batch every layer's
    pre-activations start at zero mean and unit variance per unit (Salimans & Kingma)."""
    trainer = _trainer(tmp_path, norm="weight", wn_init="data", learning_rate=1e-12, train_steps=1)
    images, _ = _first_batch(trainer)
    trainer.train()  # the init, then one step of a negligible learning rate
    _, taps = trainer.model.forward(images, training=False, tap=True)
    for layer in trainer.model.hidden_layer_names():
        pre = np.asarray(taps[f"{layer}/pre"], np.float64)
        axes = tuple(range(pre.ndim - 1))
        np.testing.assert_allclose(pre.mean(axes), 0.0, atol=1e-3, err_msg=layer)
        np.testing.assert_allclose(pre.std(axes), 1.0, atol=1e-3, err_msg=layer)


def test_wn_init_norm_leaves_the_plain_network(tmp_path):
    """--wn_init=norm: g = ||v||, so weight norm starts as the network without it."""
    wn = _trainer(tmp_path / "a", norm="weight")
    plain = _trainer(tmp_path / "b", norm="none")
    images, _ = _first_batch(wn)
    assert_close(
        wn.model(images, training=False), plain.model(images, training=False).numpy(), tf.float32
    )


def test_norm_backward_reaches_the_norms(tmp_path):
    """closed_form's gradient refuses second-order gradients; autodiff's supports them."""
    x = tf.constant(np.random.default_rng(1).normal(size=(6, 5, 5, 8)), tf.float32)
    for backward in ("closed_form", "autodiff"):
        trainer = _trainer(tmp_path / backward, norm="batch", norm_backward=backward)
        module = trainer.model.conv_norms[0]
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(module(x, training=True) ** 3)
            g = tf.reduce_sum(inner.gradient(y, x) ** 2)
        if backward == "closed_form":
            with pytest.raises(NotImplementedError, match="autodiff"):
                outer.gradient(g, x)
        else:
            assert np.all(np.isfinite(outer.gradient(g, x)))


def test_architecture_settings_shape_the_model(tmp_path):
    trainer = _trainer(tmp_path, widths=(4, 6), dense_units=10, norm="none")
    kernels = [v.shape.as_list() for v in trainer.model.trainable_variables if "kernel" in v.name]
    assert kernels == [[3, 3, 1, 4], [3, 3, 4, 6], [7 * 7 * 6, 10], [10, 10]]
    defaults = dict(widths=Config.widths, dense_units=Config.dense_units)  # course fixes both
    course = _trainer(tmp_path / "course", arch="course", norm="none", **defaults)
    assert course.model.convs[0].kernel.shape == (5, 5, 1, 30)
    assert course.model.dense.kernel.shape == (14 * 14 * 30, 100)


def test_seed_sets_the_initial_weights(tmp_path):
    a, b, c = (_trainer(tmp_path / n, seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    for va, vb, vc in zip(a.model.variables, b.model.variables, c.model.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert not np.array_equal(a.model.convs[0].kernel.numpy(), c.model.convs[0].kernel.numpy())


# -- optimization ------------------------------------------------------------------------------


def _histogram_step(trainer, images, labels) -> dict:
    return trainer.train_step(images, labels, steps.HISTOGRAMS)


def _gradient(metrics: dict, layer: str, variable: str) -> np.ndarray:
    return np.asarray(metrics[summaries.gradients_histogram(layer, variable)], np.float64)


def test_sgd_momentum_and_learning_rate_reach_the_update(tmp_path):
    """Two SGD steps by hand: w2 = w0 - lr0 g1 - lr1 (mu g1 + g2), mu = --momentum, lr from the
    step's own learning_rate; --bn_momentum must not matter here."""
    trainer = _trainer(
        tmp_path,
        norm="none",
        optimizer="sgd",
        momentum=0.6,
        learning_rate=0.2,
        lr_schedule="constant",
        bn_momentum=0.1,
    )
    images, labels = _first_batch(trainer)
    w0 = trainer.model.logits.kernel.numpy().astype(np.float64)
    m1 = _histogram_step(trainer, images, labels)
    m2 = _histogram_step(trainer, images, labels)
    g1, g2 = _gradient(m1, "logits", "kernel"), _gradient(m2, "logits", "kernel")
    lr0, lr1 = float(m1[summaries.LEARNING_RATE]), float(m2[summaries.LEARNING_RATE])
    assert lr0 == lr1 == pytest.approx(0.2)
    expected = w0 - lr0 * g1 - lr1 * (0.6 * g1 + g2)
    np.testing.assert_allclose(trainer.model.logits.kernel.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_adam_reaches_the_update(tmp_path):
    """Adam's first step, with the bias corrections folded into the step size (Kingma & Ba,
    section 2): lr * g / (|g| + eps / sqrt(1 - beta2)), about lr whatever |g|."""
    trainer = _trainer(
        tmp_path, norm="none", optimizer="adam", learning_rate=1e-3, lr_schedule="constant"
    )
    images, labels = _first_batch(trainer)
    w0 = trainer.model.logits.kernel.numpy().astype(np.float64)
    g = _gradient(_histogram_step(trainer, images, labels), "logits", "kernel")
    expected = w0 - 1e-3 * g / (np.abs(g) + 1e-7 / math.sqrt(1 - 0.999))
    np.testing.assert_allclose(trainer.model.logits.kernel.numpy(), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "schedule,warmup", [("constant", 0), ("cosine", 0), ("cosine", 4), ("constant", 3)]
)
def test_learning_rate_schedule_reaches_the_step(tmp_path, schedule, warmup):
    """The learning rate the step applies, step by step, against the formulas: linear warm-up
    from 0, then constant or cosine decay to 0 at --train_steps."""
    peak, total = 0.02, 10
    trainer = _trainer(
        tmp_path,
        norm="none",
        learning_rate=peak,
        lr_schedule=schedule,
        warmup_steps=warmup,
        train_steps=total,
    )
    images, labels = _first_batch(trainer)
    for step in range(total):
        lr = float(trainer.train_step(images, labels)[summaries.LEARNING_RATE])
        expected = peak
        if schedule == "cosine":
            progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
            expected = peak * 0.5 * (1 + math.cos(math.pi * progress))
        if warmup:
            expected = min(expected, peak * (step + 1) / warmup)
        # float32 arithmetic: 1 + cos(x) near x = pi cancels, so compare to the peak's scale.
        assert lr == pytest.approx(expected, abs=1e-6 * peak), step


def test_batch_size_augment_and_validation_size_reach_the_data(tmp_path):
    trainer = _trainer(tmp_path, batch_size=16, validation_size=40)
    images, _ = _first_batch(trainer)
    assert images.shape[0] == 16
    # tiny_splits() is already split; the trainer keeps its splits as given.
    assert len(trainer.splits.val_x) == 64
    plain = _first_batch(trainer)[0].numpy()
    augmented_config = dataclasses.replace(trainer.config, augment=True)
    trainer.config = augmented_config
    augmented = _first_batch(trainer)[0].numpy()
    assert not np.array_equal(plain, augmented)


def test_precision_sets_the_activation_dtype(tmp_path):
    for precision, dtype in (("float32", tf.float32), ("mixed_bfloat16", tf.bfloat16)):
        trainer = _trainer(tmp_path / precision, precision=precision, norm="batch")
        images, _ = _first_batch(trainer)
        logits, taps = trainer.model.forward(images, training=True, tap=True)
        assert logits.dtype == tf.float32
        assert {t.dtype for t in taps.values()} == {dtype}, precision
        assert {v.dtype for v in trainer.model.variables} == {tf.float32}
