"""normlab's models: tf.Modules with explicit variables over the core functions."""

from normlab.models.cnn import ARCHS, CNN, NORMS, WN_INITS, ModelConfig
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
]
