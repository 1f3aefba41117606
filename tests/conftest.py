"""Test setup: quiet TensorFlow's C++ logging before it is imported anywhere."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
