"""train.py and eval.py end to end, as a user runs them: files written, errors and exit codes."""

import json
import os

import pytest

from tests.fixtures import run_program as run
from tests.fixtures import train_flags_in_process

FAST = [
    "--batch_size=32",
    "--validation_size=64",
    "--widths=8",
    "--dense_units=16",
    "--checkpoint_every=4",
    "--eval_every=4",
    "--log_every=4",
    "--summary_every=2",
    "--eval_batch_size=64",
]


@pytest.mark.slow
def test_train_resume_and_eval(tmp_path, idx_dir):
    run_a, run_b = str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")
    r = run("train.py", f"--model_dir={run_a}", f"--data_dir={idx_dir}", "--train_steps=8", *FAST)
    assert r.returncode == 0, r.stderr
    assert "step 8/8" in r.stdout and "test accuracy" in r.stdout
    for path in (
        "flags.txt",
        "metrics.json",
        "checkpoints/ckpt-8.index",
        "checkpoints/ckpt-4.index",
    ):
        assert os.path.exists(os.path.join(run_a, path)), path
    for sub in ("train", "eval"):
        assert any(n.startswith("events.") for n in os.listdir(os.path.join(run_a, sub)))
    assert "--norm=batch" in open(os.path.join(run_a, "flags.txt")).read()

    # Resume with only --model_dir and a longer run: the saved flags are reused.
    r = run("train.py", f"--model_dir={run_a}", "--train_steps=12")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "step 12/12" in r.stdout
    assert json.load(open(os.path.join(run_a, "metrics.json")))["step"] == 12
    # A conflicting flag is refused and changes nothing.
    before = open(os.path.join(run_a, "flags.txt")).read()
    r = run("train.py", f"--model_dir={run_a}", "--norm=layer")
    assert r.returncode == 2 and "--norm: batch -> layer" in r.stderr
    assert open(os.path.join(run_a, "flags.txt")).read() == before

    r = run(
        "train.py",
        f"--model_dir={run_b}",
        f"--data_dir={idx_dir}",
        "--train_steps=8",
        "--norm=layer",
        "--norm_impl=builtin",
        *FAST,
    )
    assert r.returncode == 0, r.stderr

    out = tmp_path / "cmp.json"
    r = run(
        "eval.py",
        f"--model_dirs={tmp_path / 'runs'}",
        f"--json={out}",
        f"--markdown={tmp_path / 'cmp.md'}",
        f"--csv={tmp_path / 'cmp.csv'}",
    )
    assert r.returncode == 0, r.stderr
    assert "Share of test predictions two runs agree on" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 100, r.stdout
    table = json.load(open(out))
    assert [row["norm"] for row in table["runs"]] == ["batch", "layer"]
    saved = json.load(open(os.path.join(run_a, "metrics.json")))
    assert table["runs"][0]["test_accuracy"] == round(saved["test_accuracy"], 6)
    agreement = table["prediction_agreement"]
    assert agreement[0][0] == agreement[1][1] == 1.0 and agreement[0][1] == agreement[1][0]
    assert "| # | run | norm | impl |" in (tmp_path / "cmp.md").read_text()
    assert (tmp_path / "cmp.csv").read_text().startswith("#,run,dataset,arch,norm,impl")

    # A named checkpoint.
    r = run("eval.py", f"--model_dirs={run_a}", "--checkpoint=ckpt-8")
    assert r.returncode == 0 and " ckpt-8 " in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--norm=bogus"], "value should be one of"),
        (["--batch_size=0"], "--batch_size must be >= 1"),
        (["--train_steps=-1"], "--train_steps must be >= 0"),
        (["--learning_rate=abc"], "flag --learning_rate=abc"),
        (["--norm=batch", "--batch_size=1"], "needs --batch_size >= 2"),
    ],
)
def test_train_flag_errors_exit_2(tmp_path, args, message):
    """train.py's flags parsed and validated in this process (tests.fixtures)."""
    code, err = train_flags_in_process(f"--model_dir={tmp_path / 'run'}", *args)
    assert code == 2 and message in err, err


@pytest.mark.slow
def test_train_flag_errors_exit_2_without_creating_the_run(tmp_path):
    """The real program: a bad flag (parse error) and a bad combination (validation) exit 2
    and leave no run directory."""
    for args, message in (
        (["--learning_rate=abc"], "flag --learning_rate=abc"),
        (["--norm=batch", "--batch_size=1"], "needs --batch_size >= 2"),
    ):
        model_dir = tmp_path / "run"
        r = run("train.py", f"--model_dir={model_dir}", *args)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert not model_dir.exists()


@pytest.mark.slow
def test_missing_dataset_names_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("train.py", f"--model_dir={tmp_path / 'run'}", f"--data_dir={empty}")
    assert r.returncode == 2
    assert "train-images-idx3-ubyte" in r.stderr


@pytest.mark.slow
def test_eval_errors(tmp_path):
    r = run("eval.py", f"--model_dirs={tmp_path}")
    assert r.returncode == 1 and "neither a normlab run" in r.stdout
    r = run("eval.py")
    assert r.returncode == 2 and "--model_dirs is required" in r.stderr


def test_boolean_flags_read_as_what_true_does_in_help():
    from absl import flags

    from normlab.trainer import cli

    values = flags.FlagValues()
    flags.DEFINE_boolean("plan", False, "Only print the jobs.", flag_values=values)
    flags.DEFINE_integer("jobs", 1, "Jobs at once.", flag_values=values)
    values(["prog"])
    text = cli.usage("prog", "Doc.", ["plan", "jobs"], values)
    assert "  --[no]plan (default: false)\n      Only print the jobs." in text
    assert "  --jobs=1" in text and "--noplan" not in text


@pytest.mark.slow
def test_a_data_dir_that_does_not_exist_is_named_as_such(tmp_path):
    from normlab import data

    missing = tmp_path / "nonexistent"
    with pytest.raises(data.DatasetError, match=f"--data_dir={missing} does not exist"):
        data.load("fashion_mnist", str(missing), 10)
    (tmp_path / "file").write_text("")
    with pytest.raises(data.DatasetError, match="file is not a directory"):
        data.load("fashion_mnist", str(tmp_path / "file"), 10)


@pytest.mark.slow
def test_train_help_names_both_models_and_what_start_over_does():
    import ast

    from normlab.trainer import cli

    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "train.py")) as fh:
        doc = ast.get_docstring(ast.parse(fh.read()))
    assert doc.startswith("Trains a normlab model (the CNN, or the LSTM with --arch=lstm)")
    assert "earlier-attempts/N-start-over/" in cli.START_OVER_HELP
    assert "to resume a run it started, give the command without it" in cli.START_OVER_HELP
