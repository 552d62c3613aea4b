"""aioice's mDNS module (and dnspython) loads when a peer names a .local host, not with aioice.

Run in a fresh interpreter: the test process has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import sys
from callctl.media.adjust import tune_aiortc
tune_aiortc()
import aioice.ice
assert "dns" not in sys.modules, "dnspython imported with aioice"
names = ["host.example", "192.168.1.20", "printer.local.example", "local", "x.local", "bad_name.local",
         "0c5a1d2e-1111-2222-3333-444455556666.local", "A" * 64 + ".local"]
deferred = [aioice.ice.mdns.is_mdns_hostname(n) for n in names[:4]]
assert "dns" not in sys.modules, "a name that is not .local loaded it"
deferred += [aioice.ice.mdns.is_mdns_hostname(n) for n in names[4:]]
assert "dns" in sys.modules
# aioice's own function, from the module now loaded, says the same of every name
import importlib.util, importlib.machinery
spec = importlib.machinery.PathFinder.find_spec("aioice.mdns", list(aioice.__path__))
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
assert deferred == [real.is_mdns_hostname(n) for n in names], deferred
assert deferred[6] is True and deferred[0] is False
mdns = sys.modules["aioice.mdns"]
assert mdns is aioice.ice.mdns
assert mdns.create_mdns_protocol.__code__.co_filename == real.create_mdns_protocol.__code__.co_filename
assert mdns.MDnsProtocol.__module__ == "aioice.mdns"
print("ok")
"""


def test_dnspython_loads_only_for_a_local_name() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
