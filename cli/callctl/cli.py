"""The ``callctl`` program.

A call beside a running ``listen`` is dialed before the command tree is even
imported (:mod:`callctl.commands._quick`); everything else goes through it
(:mod:`callctl.app`).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    # numpy's BLAS starts a thread per core at import; our arrays are 20 ms of audio, never BLAS work
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from callctl.commands._quick import quick_call

    code = quick_call(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from callctl.app import main as run

    run()
