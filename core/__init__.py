"""normlab's core: normalization as pure functions of tensors, from basic TensorFlow ops."""

from normlab.core.batch_norm import (
    MOVING_AVERAGES,
    batch_norm,
    batch_norm_and_moments,
    batch_norm_inference,
    bias_corrected_update,
    moving_average_update,
)
from normlab.core.cross_replica import cross_replica_moments, sync_batch_norm_and_moments
from normlab.core.layer_norm import group_norm, layer_norm, rms_norm
from normlab.core.population import population_moments
from normlab.core.stats import moments, normalize
from normlab.core.weight_norm import data_dependent_init, kernel_norm, weight_norm

__all__ = [
    "batch_norm",
    "batch_norm_and_moments",
    "batch_norm_inference",
    "moving_average_update",
    "bias_corrected_update",
    "population_moments",
    "cross_replica_moments",
    "sync_batch_norm_and_moments",
    "layer_norm",
    "group_norm",
    "rms_norm",
    "weight_norm",
    "kernel_norm",
    "data_dependent_init",
    "moments",
    "normalize",
]
