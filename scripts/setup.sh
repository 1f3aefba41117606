#!/usr/bin/env bash
# Sets up normlab on a fresh machine: a virtual environment with requirements.txt, and the
# Fashion-MNIST package where it is missing. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# A few clear lines: pip's warnings about package-index locations of this machine's pip
# configuration that do not exist are dropped, as is setuptools' banner about editable
# installs (a warning in the build subprocess); pip's own errors and exit code stay.
pip_quietly() {
  PYTHONWARNINGS=ignore .venv/bin/python -m pip "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_quietly install --quiet --upgrade pip
pip_quietly install --quiet -r requirements.txt
# normlab itself, editable: `import normlab.core` from any directory (pyproject.toml).
pip_quietly install --quiet --no-deps -e .

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is not in $FMNIST; install it with" \
         "'sudo apt-get install dataset-fashion-mnist' or pass --data_dir to train.py" >&2
  fi
fi
echo "setup: ready (.venv, $(.venv/bin/python -c 'import tensorflow as tf; print("TensorFlow", tf.__version__)' 2>/dev/null))"
