"""What the programs share: absl flags from Config, help, clean errors and exit codes.

train.py, eval.py, report.py and parity.py are thin absl programs: they define their flags,
call `parse_flags_or_exit` (which answers -h/--help/--helpshort/--helpfull with the program's
usage and flags and exits 0, and a bad flag with one line and exit 2), then `run_main`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence

from absl import flags

from normlab.trainer.config import Config, format_value
from normlab.trainer.errors import Interrupted, RunError, UsageError

START_OVER_HELP = (
    "Train --model_dir from step 0 whatever it holds: the earlier run (checkpoints, summaries, "
    "metrics.json, HParams record, flags.txt) is first moved into "
    "--model_dir/earlier-attempts/N-start-over/ (nothing is deleted), and flags may differ "
    "from the saved ones. Use it once: to resume a run it started, give the command without "
    "it. Without it, a run with a checkpoint resumes, one stopped before its first checkpoint "
    "starts again from step 0 (its summaries moved to earlier-attempts/), and a finished run "
    "whose checkpoints are gone or a diverged run without checkpoint is refused."
)
HELP_ARGS = ("-h", "-help", "--help", "-helpshort", "--helpshort", "-helpfull", "--helpfull", "-?")


def define_config_flags(flag_values=flags.FLAGS) -> list[str]:
    """One absl flag per Config field, with its default, help and choices; returns the names."""
    for f in dataclasses.fields(Config):
        help_text = f.metadata["help"]
        if f.metadata["resumable"]:
            help_text += " May change on resume."
        if f.metadata["choices"]:
            flags.DEFINE_enum(
                f.name, f.default, list(f.metadata["choices"]), help_text, flag_values=flag_values
            )
        elif isinstance(f.default, bool):
            flags.DEFINE_boolean(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, int):
            flags.DEFINE_integer(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, float):
            flags.DEFINE_float(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, tuple):
            flags.DEFINE_list(f.name, format_value(f.default), help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(f.name, f.default, help_text, flag_values=flag_values)
    return [f.name for f in dataclasses.fields(Config)]


def config_from_flags(base: Config | None = None, flag_values=flags.FLAGS) -> Config:
    """A Config from the flags. With `base` (a saved run), only flags given on the command line
    (or in a --flagfile) replace its values; the others keep the saved ones."""
    values = {}
    for f in dataclasses.fields(Config):
        flag = flag_values[f.name]
        if base is None or flag.present:
            value = flag.value
            if isinstance(f.default, tuple):
                try:
                    value = tuple(int(v) for v in value if str(v).strip())
                except ValueError:
                    raise UsageError(
                        f"--{f.name} takes comma-separated integers, got {','.join(value)!r}."
                    ) from None
            values[f.name] = value
    return dataclasses.replace(base, **values) if base else Config(**values)


def usage(program: str, doc: str, names: Sequence[str], flag_values=flags.FLAGS) -> str:
    """The program's help: its docstring, then every flag with its default and help."""
    lines = [doc.strip(), "", "Flags:"]
    for name in names:
        flag = flag_values[name]
        if isinstance(flag, flags.BooleanFlag):  # --[no]name: the help says what true does
            lines.append(f"  --[no]{name} (default: {'true' if flag.default else 'false'})")
        else:
            lines.append(f"  {flag.serialize() or '--' + name}")  # --name=default
        lines += textwrap.wrap(flag.help, 96, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "A flag file holds one --name=value per line: --flagfile=FILE."]
    return "\n".join(lines)


def parse_flags_or_exit(
    argv: list[str], program: str, doc: str, names: Sequence[str], flag_values=flags.FLAGS
) -> list[str]:
    """absl's flag parsing, with help that works and clean errors.

    -h, --help, --helpshort, --helpfull: print the usage and exit 0. A bad flag, or a word that
    is no flag (`--augment false`, a path without --model_dir=): one line naming it and the help
    command, exit 2, no trace.
    """
    if any(arg in HELP_ARGS for arg in argv[1:]):
        try:
            flag_values(argv[:1])  # parse nothing, so defaults are readable
        except flags.Error:
            pass
        try:
            print(usage(program, doc, names, flag_values), flush=True)
        except BrokenPipeError:  # `program --help | head`: the reader left, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        print(f"{program}: error: {e}\nRun {program} --help for every flag.", file=sys.stderr)
        sys.exit(2)
    if len(rest) > 1:  # the programs take flags only: a word left over was meant as one
        print(
            f"{program}: error: {leftover_message(argv, rest[1], names, flag_values)}\n"
            f"Run {program} --help for every flag.",
            file=sys.stderr,
        )
        sys.exit(2)
    return rest


BOOLEAN_WORDS = ("true", "false", "yes", "no", "t", "f", "1", "0")


def leftover_message(argv: Sequence[str], word: str, names: Sequence[str], flag_values) -> str:
    """Why a word that is no flag is refused, and what was meant.

    absl leaves such a word aside, which would silently change the run: `--augment false`
    sets --augment (true) and drops 'false'; `train.py runs/a` has no --model_dir."""

    def flag_named(arg: str):  # the flag `arg` sets without '=' (--name, --noname), or None
        name = arg.lstrip("-") if arg.startswith("-") and "=" not in arg else ""
        if name not in flag_values and name.startswith("no") and name[2:] in flag_values:
            name = name[2:]
        return flag_values[name] if name in flag_values else None

    def takes_value(arg: str) -> bool:  # `--name value`: the next word is the flag's value
        flag = flag_named(arg)
        return flag is not None and not isinstance(flag, flags.BooleanFlag)

    places = [j for j in range(2, len(argv)) if argv[j] == word and not takes_value(argv[j - 1])]
    before = argv[places[0] - 1] if places else ""
    flag = flag_named(before)
    if isinstance(flag, flags.BooleanFlag) and word.lower() in BOOLEAN_WORDS:
        name = flag.name
        return (
            f"'{before} {word}': a boolean flag takes its value after '=' (--{name}={word}), "
            f"or is written --{name} for true and --no{name} for false."
        )
    hint = next((f" (--{n}={word}?)" for n in ("model_dir", "model_dirs") if n in names), "")
    return (
        f"unexpected argument {word!r}{hint}: only flags are taken, each written --name=value."
    )


def run_main(main: Callable[[], int], program: str) -> int:
    """Runs main; a UsageError/DatasetError (or a run directory in use) exits 2, a RunError 1,
    each as one paragraph `program: error: ...`; an interruption (SIGINT/SIGTERM, after
    saving) `program: interrupted: ...`, exit 128 + signal.

    Other exceptions are bugs: their trace is printed (NORMLAB_TRACEBACK=1 prints it for the
    expected errors too). Ctrl-C before main runs: normlab/quiet.py.
    """
    from normlab.data import DatasetError  # imported here: data imports TensorFlow

    try:
        return main()
    except Interrupted as e:  # a clean stop, not an error
        if os.environ.get("NORMLAB_TRACEBACK"):
            traceback.print_exc()
        print(f"{program}: interrupted: {e}", file=sys.stderr)
        return e.exit_code
    except (UsageError, DatasetError, RunError) as e:
        if os.environ.get("NORMLAB_TRACEBACK"):
            traceback.print_exc()
        code = getattr(e, "exit_code", 2)
        print(f"{program}: error: {e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        # Outside a training step (the trainer itself turns SIGINT into a clean stop).
        print(f"{program}: interrupted.", file=sys.stderr)
        return 130


__all__ = [
    "RunError",
    "UsageError",
    "config_from_flags",
    "define_config_flags",
    "parse_flags_or_exit",
    "run_main",
    "usage",
]


if __name__ == "__main__":  # `python -m normlab.trainer.cli`: a library, not a program
    print(
        "normlab.trainer.cli is the programs' shared code, not a program. Train with "
        "normlab-train (python train.py in a checkout); normlab-train --help lists its flags.",
        file=sys.stderr,
    )
    sys.exit(2)
