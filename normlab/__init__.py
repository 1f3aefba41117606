"""normlab's import name: `normlab.core`, `normlab.models`, `normlab.data`, `normlab.trainer` and
`normlab.report` are the repository's top-level folders of the same names.

Importing normlab imports TensorFlow through `normlab.quiet`, without TensorFlow's C++ start-up
lines on the terminal (NORMLAB_VERBOSE=1 keeps them): every program and `python -m` entry point
gets the same quiet start, whichever module it runs.

Why a package of its own: `core`, `models` and `data` are names a user's own project may have.
Imported as top-level modules they would shadow the user's modules, or be shadowed by them
(whichever comes first on sys.path wins, and the other side breaks). Under one distinctive
name neither happens. This package holds no code: its search path is the repository root, so
`normlab.core` is the folder `core/`. From a checkout the programs (train.py, ...) find it next
to them; `pip install -e .` (scripts/setup.sh does it) makes it importable from anywhere.
"""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPOSITORY = os.path.dirname(_HERE)
# An installed copy (pip install .) holds the folders inside this directory; a checkout or an
# editable install holds them beside it.
__path__ = [_HERE] + ([_REPOSITORY] if os.path.isdir(os.path.join(_REPOSITORY, "core")) else [])

from normlab import quiet  # noqa: E402

quiet.import_tensorflow()
