"""Prints normlab's functions against TensorFlow's built-ins: forward and gradient differences.

Usage:
    .venv/bin/python parity.py              # every norm, shape and dtype (~10 s)
    .venv/bin/python parity.py --markdown   # the same as a Markdown table (BUILD_NOTES.md)

For every norm of the registry (core/registry.py) and each TensorFlow built-in of the same
function, on the same random inputs: the largest difference of the outputs and of the gradients
of sum(y * dy) for a fixed random dy (rel = max|custom - builtin| / max|builtin|).
"""

import sys

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
import tensorflow as tf
from absl import flags

from normlab.trainer import cli

flags.DEFINE_boolean("markdown", False, "Print a Markdown table instead of aligned text.")
FLAGS = flags.FLAGS


def main() -> int:
    from normlab.core import parity

    print(
        f"TensorFlow {tf.__version__}; gradients of sum(y * dy), dy ~ N(0, 1); "
        "rel = max|custom - builtin| / max|builtin|"
    )
    print(parity.format_table(parity.table(), FLAGS.markdown))
    return 0


if __name__ == "__main__":
    cli.parse_flags_or_exit(sys.argv, "parity.py", __doc__, ["markdown"])
    sys.exit(cli.run_main(main, "parity.py"))
