"""normlab as a package a user installs: its declared dependencies, and a wheel that works in a
fresh virtual environment."""

import os
import re
import subprocess
import sys
import venv

import pytest
import tomllib

from tests.fixtures import ROOT


def _requirements() -> dict[str, str]:
    out = {}
    for line in open(os.path.join(ROOT, "requirements.txt")):
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", line).groups()
            out[name.lower().replace("_", "-")] = spec.strip()
    return out


def _declared() -> dict[str, str]:
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    out = {}
    for req in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", req).groups()
        out[name.lower().replace("_", "-")] = spec.strip()
    return out


def test_pyproject_declares_every_requirement_with_the_same_range():
    assert _declared() == _requirements()


@pytest.mark.slow
def test_a_wheel_installs_into_a_fresh_virtualenv_and_runs_a_layer_and_the_programs(
    tmp_path, idx_dir
):
    """Builds the wheel, installs it with its dependencies into a new virtualenv (pip's cache
    and the package index supply them), and uses normlab.core and a Keras layer from there;
    its commands answer --help and normlab-train trains, from a directory outside the
    checkout."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), ROOT],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = [w for w in os.listdir(wheels) if w.endswith(".whl")]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(wheels / wheel)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import numpy as np, keras\n"
        "from normlab.core import layer_norm\n"
        "from normlab.models import LayerNormalization\n"
        "x = np.random.default_rng(0).normal(size=(4, 6)).astype('float32')\n"
        "y = LayerNormalization()(x)\n"
        "z = layer_norm(x, np.ones(6, 'float32'), np.zeros(6, 'float32'), eps=1e-3)\n"
        "assert np.allclose(y, z, atol=1e-6)\n"
        "import normlab.core, os\n"
        "print(os.path.dirname(normlab.core.__file__))\n"
    )
    used = subprocess.run(
        [python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert used.returncode == 0, used.stderr[-2000:]
    assert str(env_dir) in used.stdout  # the installed copy, not the checkout

    def command(*args):
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              check=False)  # fmt: skip

    bin_dir = env_dir / "bin"
    for name, flag in (
        ("normlab-train", "--model_dir="),
        ("normlab-eval", "--model_dirs="),
        ("normlab-report", "--preset="),
        ("normlab-parity", "--[no]markdown"),
    ):  # each program's usage and flags
        r = command(str(bin_dir / name), "--help")
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert "Usage:" in r.stdout and "\nFlags:\n" in r.stdout and flag in r.stdout, name
    run_dir = tmp_path / "run"
    r = command(str(bin_dir / "normlab-train"), f"--model_dir={run_dir}", f"--data_dir={idx_dir}",
                "--train_steps=2", "--batch_size=16", "--validation_size=64", "--widths=8",
                "--dense_units=16")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test accuracy" in r.stdout + r.stderr and (run_dir / "metrics.json").exists()
    r = command(str(bin_dir / "normlab-eval"), f"--model_dirs={run_dir}")
    assert r.returncode == 0 and "finished" in r.stdout, r.stdout + r.stderr
    # The library's module is not a program: it says what to run instead of doing nothing.
    r = command(python, "-m", "normlab.trainer.cli", "--help")
    assert r.returncode == 2 and "normlab-train" in r.stderr, r.stdout + r.stderr
