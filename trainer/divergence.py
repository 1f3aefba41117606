"""A non-finite training step: which layer, whether the loss or the gradient, and the stop.

The step that produced it applied nothing (trainer/steps.py). Its batch, a pure function of
seed and step, is run again through the step with per-layer gradient norms (which again
applies nothing) and through the forward pass with every layer's activations; the first layer
whose activations, else whose gradient, is not finite is named. metrics.json records the step
and the layer (so a run directory says it diverged), and the error says which of the loss and
the gradient was not finite, with its value.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from normlab.trainer import steps, summaries
from normlab.trainer.errors import NonFiniteError


def stop(trainer, step: int) -> NoReturn:
    """Diagnoses the non-finite step `step` of `trainer` (a Trainer), records it in
    metrics.json and raises NonFiniteError."""
    c = trainer.config
    images, labels = (
        trainer.splits.train_batches(
            batch_size=c.batch_size, seed=c.seed, augment=c.augment, start_step=step - 1
        )
        .take(1)
        .get_single_element()
    )
    metrics = trainer.train_step(images, labels, steps.SCALARS)
    _, taps = trainer.model.forward(images, training=False, tap=True)
    culprit = next(
        (k.split("/")[0] for k, t in taps.items() if not np.all(np.isfinite(t.numpy()))),
        None,
    )
    if culprit is None:
        culprit = next(
            (
                name
                for name, _ in trainer.model.named_layers()
                if not np.isfinite(float(metrics[summaries.grad_norm(name)]))
            ),
            "the loss",
        )
    trainer.run_dir.write_metrics({"diverged_at_step": step, "diverged_layer": culprit})
    loss = float(metrics[summaries.LOSS])
    which = (
        f"non-finite loss at step {step} (loss {loss:.4g})"
        if not np.isfinite(loss)
        else f"non-finite gradient at step {step} (gradient norm "
        f"{float(metrics[summaries.GRAD_NORM_GLOBAL]):.4g}; the loss, {loss:.4g}, is finite)"
    )
    raise NonFiniteError(
        step,
        culprit,
        f"{which}; first non-finite layer: {culprit}. Training stopped; the last good "
        f"checkpoint ({trainer.manager.latest_checkpoint or 'none yet'}) is kept. Try a lower "
        f"--learning_rate (now {c.learning_rate}) or a normalization.",
    )
