"""``--backend jax|tensorflow|torch`` for the Keras scripts of the zoo and the
benchmarks.

Keras reads its backend once, at ``import keras``; a command-line option can
only choose it if it is read before that import. Import this module first::

    from keras_backend import BACKENDS, backend_from_argv
    backend_from_argv()         # sets KERAS_BACKEND from --backend
    import keras

and declare the option to ``argparse`` with ``choices=BACKENDS`` so that
``--help`` shows it.
"""

import os
import sys

__all__ = ["BACKENDS", "backend_from_argv"]

#: The Keras 3 backends TMPISync runs on.
BACKENDS = ("jax", "tensorflow", "torch")


def backend_from_argv(argv=None, default="torch"):
    """Set ``KERAS_BACKEND`` from ``--backend NAME`` (or ``--backend=NAME``)
    in ``argv`` (default ``sys.argv[1:]``); without the option, keep the
    environment's choice, else ``default``.

    Returns:
        the backend name now in ``KERAS_BACKEND``. An unknown name is left
        for ``argparse`` to reject with its usage message.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
        elif arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
    os.environ.setdefault("KERAS_BACKEND", default)
    return os.environ["KERAS_BACKEND"]
