"""Imports TensorFlow without its C++ start-up lines on a user's terminal.

TF 2.21 writes its oneDNN notice and "could not find cuda drivers" lines to file descriptor 2
before its logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot silence them.
`import_tensorflow()` points fd 2 at /dev/null while TensorFlow imports and finds its devices
(GPUs are still found), then restores it. `import normlab` calls it, so every entry point
(train.py, eval.py, report.py, parity.py, `python -m bench.ops`, the tests, ...) starts quietly
before anything else imports TensorFlow; if TensorFlow was imported already, it does nothing.
Python errors raised meanwhile are re-raised after the restore, so nothing real is hidden.
NORMLAB_VERBOSE=1 keeps everything.

TF_CPP_MIN_LOG_LEVEL defaults to 3 (a user's own setting is kept): TensorFlow's C++ logs its
notices at ERROR level too ("oneDNN supports DT_HALF only on platforms with AVX-512" at the
first float16 op), which reads as a failure on a user's terminal; real failures still arrive
as Python exceptions with their messages.

It lives here, in the import package, because importing it must not import TensorFlow (every
other package of normlab does).
"""

import os
import sys


def import_tensorflow():
    """Imports TensorFlow quietly (once) and returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("NORMLAB_VERBOSE") or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf
