"""The ``callctl`` program.

A call beside a running ``listen`` is dialed before the command tree is even
imported (:mod:`callctl.commands._quick`); everything else goes through it
(:mod:`callctl.app`).
"""

from __future__ import annotations

import sys


def main() -> None:
    from callctl.commands._quick import quick_call

    code = quick_call(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from callctl.app import main as run

    run()
