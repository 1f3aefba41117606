"""normlab's models: tf.Modules with explicit variables over the core functions, and Keras 3
layers over the same functions (models/keras_layers.py, models/keras_weight_norm.py)."""

from normlab.models.cnn import CNN
from normlab.models.config import ARCHS, WN_INITS, ConfigError, ModelConfig
from normlab.models.keras_layers import (
    BatchNormalization,
    GroupNormalization,
    LayerNormalization,
    RMSNormalization,
)
from normlab.models.keras_weight_norm import WeightNormalization
from normlab.models.layers import Conv2D, Dense
from normlab.models.norms import BatchNorm, Normalization, make_norm
from normlab.models.population import recompute_batch_norm_statistics

__all__ = [
    "build_model",
    "ARCHS",
    "CNN",
    "WN_INITS",
    "ConfigError",
    "ModelConfig",
    "Conv2D",
    "Dense",
    "BatchNorm",
    "Normalization",
    "make_norm",
    "recompute_batch_norm_statistics",
    "BatchNormalization",
    "GroupNormalization",
    "LayerNormalization",
    "RMSNormalization",
    "WeightNormalization",
]


def build_model(
    config: ModelConfig, image_shape=(28, 28, 1), num_classes=10, compute_dtype="float32"
):
    """The network `config.arch` names: the CNN (default, course) or the LSTM."""
    if config.arch == "lstm":
        from normlab.models.lstm import LSTM

        return LSTM(config, image_shape, num_classes, compute_dtype)
    return CNN(config, image_shape, num_classes, compute_dtype)
