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

Ctrl-C in a normlab program (a file of this checkout run as `__main__`: train.py, eval.py,
report.py, parity.py, `python -m bench.ops`, ...; or a `normlab-*` console script) prints
"<program>: interrupted." and exits 130 at any moment, also during the seconds of TensorFlow's
import, before the program's own handling (trainer/cli.py's run_main) is in place: an uncaught
KeyboardInterrupt reaches `sys.excepthook`, which `import normlab` sets for programs only
(a user's own script or an interactive session keeps Python's trace). NORMLAB_TRACEBACK=1
keeps the trace.

It lives here, in the import package, because importing it must not import TensorFlow (every
other package of normlab does).
"""

import os
import sys

# The directory that holds the normlab package (a checkout's root, or site-packages).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a program Ctrl-C stopped


def program_name() -> str | None:
    """This process's normlab program (train.py, normlab-train, ...), or None: an
    interactive session, or a program that is not normlab's."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main or hasattr(sys, "ps1") or sys.flags.interactive or not sys.argv:
        return None
    name = os.path.basename(sys.argv[0])
    own = os.path.realpath(main).startswith(os.path.realpath(_ROOT) + os.sep)
    return name if own or name.startswith("normlab") else None


def exit_interrupted(program: str) -> None:
    """One line on stderr, exit 130, nothing else run (a half-imported TensorFlow's exit
    handlers included)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.write(2, f"{program}: interrupted.\n".encode())
    os._exit(INTERRUPTED_EXIT)


def _clean_interrupt_hook(program: str, previous):
    def hook(kind, value, trace):
        if issubclass(kind, KeyboardInterrupt) and not os.environ.get("NORMLAB_TRACEBACK"):
            exit_interrupted(program)
        previous(kind, value, trace)

    return hook


def import_tensorflow():
    """Imports TensorFlow quietly (once) and returns the module; in a normlab program, makes
    Ctrl-C print one line from now on (see the module's docstring)."""
    program = program_name()
    if program and not getattr(sys.excepthook, "normlab", False):
        sys.excepthook = _clean_interrupt_hook(program, sys.excepthook)
        sys.excepthook.normlab = True
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
