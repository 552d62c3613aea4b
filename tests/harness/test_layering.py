"""The harness drives callctl from the outside: it never imports the engine, media or server."""

from __future__ import annotations

import subprocess
import sys

from callctl.harness.child import callctl_env

MODULES = ["bench", "child", "looplag", "machine", "netns", "procfs", "relay", "server", "stats", "turn"]


def test_the_harness_imports_no_engine_media_or_server() -> None:
    code = (f"import sys; import {', '.join('callctl.harness.' + m for m in MODULES)}; "
            "print(sorted(m for m in sys.modules if m.startswith('callctl.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=callctl_env(), check=True).stdout
    loaded = eval(out)  # a printed list of module names
    assert not [m for m in loaded if m.split(".")[1] in ("engine", "media", "server")], loaded
