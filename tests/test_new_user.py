"""What a new user met on a fresh clone beyond issue 24's list, each slip tested where it shows.

A word on the command line that is no flag: absl leaves it aside, so `--augment false` trained
with augmentation (the word 'false' dropped) and `--start_over no` started over; the programs
refuse such a word with one line and exit 2 instead.
"""

import os
import subprocess
import sys

import pytest
from absl import flags

from normlab.trainer import cli
from tests.fixtures import ROOT


def _flag_values() -> tuple[flags.FlagValues, list[str]]:
    """train.py's flags in a FlagValues of their own (the process-wide FLAGS stay untouched)."""
    fv = flags.FlagValues()
    flags.DEFINE_string("model_dir", None, "run directory", flag_values=fv)
    flags.DEFINE_boolean("start_over", False, cli.START_OVER_HELP, flag_values=fv)
    names = ["model_dir", "start_over"] + cli.define_config_flags(fv)
    return fv, names


def _parse(argv, capsys):
    """parse_flags_or_exit on argv: (exit code or None, stderr, the FlagValues)."""
    fv, names = _flag_values()
    try:
        cli.parse_flags_or_exit(["train.py", *argv], "train.py", "doc", names, fv)
        code = None
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err, fv


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--model_dir=r", "--augment", "false"], "augment"),
        (["--model_dir=r", "--start_over", "no"], "start_over"),
        (["--model_dir=r", "--nodeterministic", "true"], "deterministic"),
        (["--model_dir", "false", "--augment", "False"], "augment"),  # 'false' first: a value
    ],
)
def test_boolean_flag_with_a_separate_value_is_refused(argv, flag, capsys):
    code, err, _ = _parse(argv, capsys)
    assert code == 2
    assert f"--{flag}=" in err and f"--no{flag} for false" in err
    assert "Run train.py --help" in err and len(err.strip().splitlines()) == 2


def test_a_path_without_its_flag_is_refused_with_the_flag_named(capsys):
    code, err, _ = _parse(["runs/a", "--train_steps=60"], capsys)
    assert code == 2
    assert "unexpected argument 'runs/a' (--model_dir=runs/a?)" in err


def test_a_word_after_the_flags_is_refused(capsys):
    code, err, _ = _parse(["--model_dir=r", "--train_steps=1", "extra"], capsys)
    assert code == 2 and "unexpected argument 'extra'" in err


def test_flags_with_separate_values_still_parse(capsys):
    code, err, fv = _parse(["--model_dir", "runs/a", "--norm", "layer", "--augment"], capsys)
    assert code is None and err == ""
    assert (fv.model_dir, fv.norm, fv.augment) == ("runs/a", "layer", True)


@pytest.mark.slow
def test_train_py_refuses_a_separate_boolean_value_before_creating_the_run(tmp_path):
    """The real program: exit 2 and no run directory (with the bug it trained one step)."""
    model_dir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--model_dir={model_dir}"]
        + ["--train_steps=1", "--validation_size=64", "--widths=8", "--dense_units=16"]
        + ["--augment", "false"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "'--augment false'" in r.stderr and "Traceback" not in r.stderr
    assert not model_dir.exists()


def test_a_batch_larger_than_the_data_names_the_fix():
    from normlab.data import DatasetError, pipeline

    with pytest.raises(DatasetError, match=r"larger than the 10 training examples: choose a "):
        pipeline.steps_per_epoch(10, 11)
