"""Calls across two NATs and coturn against calls on loopback, reconnects, and a long lossy run.

In one run, on this machine (docs/NETWORK.md, figures in docs/PERFORMANCE.md):

1. direct: ``--calls`` calls on loopback (host candidates), dial → connected
   and dial → first audio at the caller (its own event times);
2. through the NATs: the same between two namespaces behind a port-restricted
   and a symmetric NAT, through coturn (the selected pair must be a relay);
3. reconnect: one call, the kiosk's cable pulled for 5 s ``--reconnects`` times;
   from the cable back to ``call.reconnected`` on both sides (the later one);
4. loss: ``--loss-minutes`` of back-to-back calls with ``--loss`` % of each
   way's UDP dropped at the kiosk's router (nftables), counting calls that
   did not end as hung up (target: none).

Targets: NAT set-up ≤ 1.5× direct (medians); reconnect ≤ 3 s after the
cable is back (median and worst); 0 dropped calls.  Exit 0: all met, 1: a
target missed, 2: could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))  # run from a checkout without installing too

from callctl.harness import netns  # noqa: E402
from callctl.harness.bench import CANNOT_RUN, INTERRUPTED, MET, MISSED, cleaning_up, keep_or_remove, log, stop_on_signals  # noqa: E402,E501
from callctl.harness.child import Child, callctl_command, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess  # noqa: E402
from callctl.harness.turn import Coturn  # noqa: E402

MEDIA = ["--audio-in", "tone:440", "--audio-out", "null"]


class Site:
    """A server, and how to run callctl next to it (``on``: an argv prefix, e.g. a namespace)."""

    def __init__(self, tmp: Path, name: str, server: ServerProcess) -> None:
        self.server = server
        self.env = callctl_env(XDG_RUNTIME_DIR=str(tmp / f"run-{name}"), XDG_STATE_HOME=str(tmp),
                               CALLCTL_SERVER=server.url, CALLCTL_SECRET_FILE=str(server.secret_file))
        (tmp / f"run-{name}").mkdir()
        self.procs: list[Child] = []

    def start(self, on: list[str], *args: str, name: str) -> Child:
        child = Child([*on, *callctl_command("--json", *args)], name=name, env=self.env)
        self.procs.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.procs):
            child.stop(grace=3)
        self.procs.clear()
        self.server.stop()


def setups(site: Site, kiosk_on: list[str], caller_on: list[str], calls: int, relay: bool) -> dict:
    """Medians of dial → connected and dial → first audio over ``calls`` calls."""
    kiosk = site.start(kiosk_on, "--as", "bob", "listen", "--auto-accept", "--device", "k", *MEDIA,
                       name="kiosk")
    kiosk.wait_event("registered", timeout=20)
    connected, audio, routes = [], [], set()
    for i in range(calls):
        caller = site.start(caller_on, "--as", "alice", "call", "bob", "--device", "c",
                            "--hangup-after", "0.5", *MEDIA, name=f"caller-{i}")
        up = caller.wait_event("call.connected", timeout=30)
        flowing = caller.wait_event("media.flowing", timeout=10)
        dialed = caller.find("call.outgoing")
        assert dialed is not None
        connected.append((up["ts"] - dialed["ts"]) * 1000)
        audio.append((flowing["ts"] - dialed["ts"]) * 1000)
        routes.add(up["route"]["via"])
        code = caller.wait_exit(20)
        if code != 0:
            raise RuntimeError(f"call {i} exited {code}: {caller.describe()}")
        kiosk.wait_event("call.ended", count=i + 1, timeout=20)
    kiosk.stop(grace=3)
    if relay and routes != {"relay"}:
        raise RuntimeError(f"calls through the NATs took {routes}, not the relay")
    return {"dial_to_connected_ms": round(statistics.median(connected), 1),
            "dial_to_first_audio_ms": round(statistics.median(audio), 1),
            "routes": sorted(routes), "calls": calls}


def reconnects(site: Site, net: netns.Topology, times: int) -> dict:
    """Cable out for 5 s, ``times`` times in one call: cable back → reconnected on both sides."""
    kiosk = site.start(net.prefix("a"), "--as", "bob", "listen", "--auto-accept", "--device", "k2",
                       *MEDIA, name="kiosk")
    kiosk.wait_event("registered", timeout=20)
    caller = site.start(net.prefix("b"), "--as", "alice", "call", "bob", "--device", "c2", *MEDIA,
                        name="caller")
    caller.wait_event("call.connected", timeout=30)
    kiosk.wait_event("call.connected", timeout=30)
    back_ms, detect_ms = [], []
    for i in range(times):
        time.sleep(1.0)  # some media first
        down = time.time()
        net.link_down("a")
        for side in (caller, kiosk):
            side.wait_event("call.reconnecting", count=i + 1, timeout=20)
        detect_ms.append((max(s.named("call.reconnecting")[-1]["ts"] for s in (caller, kiosk)) - down) * 1000)
        time.sleep(5.0)
        net.link_up("a")
        up = time.time()
        for side in (caller, kiosk):
            side.wait_event("call.reconnected", count=i + 1, timeout=30)
        last = max(s.named("call.reconnected")[-1]["ts"] for s in (caller, kiosk))
        back_ms.append((last - up) * 1000)
        log(f"reconnect {i + 1}/{times}: {back_ms[-1]:.0f} ms after the cable was back")
    caller.stop(grace=3)
    kiosk.stop(grace=3)
    return {"times": times, "link_up_to_reconnected_ms_median": round(statistics.median(back_ms), 1),
            "link_up_to_reconnected_ms_worst": round(max(back_ms), 1),
            "link_down_to_reconnecting_ms_median": round(statistics.median(detect_ms), 1),
            "all_ms": [round(x) for x in back_ms]}


def lossy(site: Site, net: netns.Topology, minutes: float, percent: float, call_s: float) -> dict:
    """Back-to-back calls for ``minutes`` with ``percent`` % UDP loss each way at the kiosk."""
    net.set_loss("a", percent)
    kiosk = site.start(net.prefix("a"), "--as", "carol", "listen", "--auto-accept", "--device", "k3",
                       *MEDIA, name="kiosk")
    kiosk.wait_event("registered", timeout=20)
    deadline = time.monotonic() + minutes * 60
    calls = dropped = reconnected = 0
    reasons: dict[str, int] = {}
    try:
        while time.monotonic() < deadline:
            caller = site.start(net.prefix("b"), "--as", "dave", "call", "carol", "--device", "c3",
                                "--hangup-after", str(call_s), *MEDIA, name=f"caller-{calls}")
            code = caller.wait_exit(call_s + 60)
            calls += 1
            ended = caller.find("call.ended") or {}
            reason = str(ended.get("reason", f"exit {code}"))
            reasons[reason] = reasons.get(reason, 0) + 1
            reconnected += len(caller.named("call.reconnected"))
            if code != 0 or reason != "hangup" or not caller.named("call.connected"):
                dropped += 1
                log(f"call {calls}: dropped ({reason}, exit {code})")
            site.procs.remove(caller)
            if code is None:
                caller.stop(grace=1)
    finally:
        net.set_loss("a", 0)
    return {"minutes": minutes, "loss_pct_each_way": percent, "calls": calls, "dropped": dropped,
            "reasons": reasons, "reconnects": reconnected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--reconnects", type=int, default=10)
    parser.add_argument("--loss-minutes", type=float, default=30.0)
    parser.add_argument("--loss", type=float, default=5.0)
    parser.add_argument("--call-seconds", type=float, default=60.0, help="Length of each lossy call.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp dir with the logs.")
    args = parser.parse_args()
    reason = netns.available()
    if reason is not None:
        log(f"cannot run: {reason}")
        return CANNOT_RUN
    stop_on_signals(timeout=args.loss_minutes * 60 + 900)
    tmp = Path(tempfile.mkdtemp(prefix="bench-network-"))
    report: dict = {}
    sites: list[Site] = []
    net = netns.Topology()
    try:
        log(f"direct on loopback: {args.calls} calls")
        (tmp / "direct").mkdir()
        direct = Site(tmp, "direct", ServerProcess(tmp / "direct", ["--log-level", "warning"]).start())
        sites.append(direct)
        report["direct"] = setups(direct, [], [], args.calls, relay=False)
        direct.stop()
        net.build()
        turn = Coturn(tmp / "coturn", netns.PUBLIC, netns=net.ns("pub")).start()
        secret = tmp / "turn-secret"
        secret.write_text(turn.secret + "\n")
        os.chmod(secret, 0o600)
        (tmp / "nat").mkdir()
        server = ServerProcess(tmp / "nat", ["--host", netns.PUBLIC, "--log-level", "warning",
                                             "--heartbeat", "5", "--stun", turn.stun_url, "--turn", turn.url,
                                             "--turn-secret-file", str(secret)],
                               command=[*net.prefix("pub"), *callctl_command()])
        nat = Site(tmp, "nat", server.start())
        sites.append(nat)
        log(f"through two NATs and coturn: {args.calls} calls")
        report["through_turn"] = setups(nat, net.prefix("a"), net.prefix("b"), args.calls, relay=True)
        report["setup_ratio"] = round(report["through_turn"]["dial_to_connected_ms"]
                                      / report["direct"]["dial_to_connected_ms"], 2)
        report["first_audio_ratio"] = round(report["through_turn"]["dial_to_first_audio_ms"]
                                            / report["direct"]["dial_to_first_audio_ms"], 2)
        if args.reconnects:
            log(f"reconnects: {args.reconnects} cable pulls of 5 s")
            report["reconnect"] = reconnects(nat, net, args.reconnects)
        if args.loss_minutes > 0:
            log(f"loss: {args.loss_minutes:g} min of {args.call_seconds:g} s calls at {args.loss:g} % loss")
            report["loss"] = lossy(nat, net, args.loss_minutes, args.loss, args.call_seconds)
        turn.stop()
    except KeyboardInterrupt:
        cleaning_up()
        return INTERRUPTED
    except Exception as exc:
        log(f"cannot run: {type(exc).__name__}: {exc}")
        cleaning_up()
        for site in sites:
            site.stop()
        net.close()
        keep_or_remove(tmp, True)
        return CANNOT_RUN
    finally:
        cleaning_up()
        for site in sites:
            site.stop()
        net.close()
    keep_or_remove(tmp, args.keep)
    targets = {"setup ≤ 1.5× direct": report["setup_ratio"] <= 1.5}
    if "reconnect" in report:
        targets["reconnect ≤ 3 s after link up"] = report["reconnect"]["link_up_to_reconnected_ms_worst"] <= 3000
    if "loss" in report:
        targets["0 dropped calls at loss"] = report["loss"]["dropped"] == 0
    report["targets"] = targets
    print(json.dumps(report, indent=2))
    return MET if all(targets.values()) else MISSED


if __name__ == "__main__":
    sys.exit(main())
