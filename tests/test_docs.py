"""The README stays true: its commands are what CI runs, and it documents every flag."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from normlab.trainer.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def _commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    return [
        line.strip()
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_opens_with_the_run_and_test_commands():
    run, test = _commands()[:2]
    assert run.startswith("bash scripts/setup.sh && ") and "train.py" in run
    assert test.startswith("bash scripts/setup.sh && ") and "pytest" in test
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert test in ci.splitlines(), "CI must run the README's test command"


def test_every_train_flag_is_documented():
    for field in dataclasses.fields(Config):
        assert f"`--{field.name}`" in README, field.name
    assert "`--start_over`" in README  # train.py's own flag, which its errors name


def test_the_flag_table_is_the_one_generated_from_the_flags():
    from normlab.trainer.config import flags_markdown

    assert flags_markdown() in README


def test_the_tensorboard_tags_table_is_the_one_the_code_writes():
    from normlab.trainer import summaries

    assert summaries.tags_markdown() in README
    constants = [v for k, v in vars(summaries).items() if k.isupper() and isinstance(v, str)]
    for tag in (c for c in constants if "/" in c):
        assert f"`{tag}`" in summaries.tags_markdown(), tag


@pytest.mark.slow
def test_the_library_example_runs_from_any_directory(tmp_path):
    """The README's first Python example, run from an empty temporary directory: normlab is
    importable wherever the user is (the set-up installs it), not only from the checkout."""
    code = README.split("## The functions", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_no_unfilled_placeholders():
    assert not re.search(r"PLACEHOLDER|TODO|TBD|XXX", README)
