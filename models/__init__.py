"""normlab's models: tf.Modules with explicit variables over the core functions, and Keras 3
layers over the same functions (models/keras_layers.py, models/keras_weight_norm.py)."""

from normlab.models.cnn import ARCHS, CNN, NORMS, WN_INITS, ModelConfig
from normlab.models.keras_layers import (
    BatchNormalization,
    GroupNormalization,
    LayerNormalization,
    RMSNormalization,
)
from normlab.models.keras_weight_norm import WeightNormalization
from normlab.models.layers import Conv2D, Dense
from normlab.models.norms import IMPLS, BatchNorm, GroupNorm, LayerNorm

__all__ = [
    "ARCHS",
    "CNN",
    "NORMS",
    "WN_INITS",
    "ModelConfig",
    "Conv2D",
    "Dense",
    "IMPLS",
    "BatchNorm",
    "GroupNorm",
    "LayerNorm",
    "BatchNormalization",
    "GroupNormalization",
    "LayerNormalization",
    "RMSNormalization",
    "WeightNormalization",
]
