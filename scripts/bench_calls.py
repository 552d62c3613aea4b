#!/usr/bin/env python3
"""Call benchmark: callctl caller/callee on loopback, side by side with baresip.

In one run it measures, for N runs each (medians reported):

callctl (two ``callctl`` processes and one ``callctl server``, all on 127.0.0.1):

* scenario "auto": ``callctl listen --auto-accept`` is started and registered,
  then ``callctl call bob --hangup-after DURATION+2`` is spawned.
  - start -> media: the caller's ``media.flowing`` event ts (first decoded
    remote audio frame) minus the wall-clock time just before the caller
    process was spawned (interpreter start, imports, registration, dial,
    ICE + DTLS, first frame out of aiortc's jitter buffer);
  - dial -> connected: the caller's ``call.connected`` ``setup_ms`` (measured
    inside the process from the dial to ICE + DTLS connected);
  - CPU per side: utime+stime from /proc/PID/stat of the caller and of the
    listener, sampled when the caller's ``call.connected`` line is read and
    DURATION s later, as % of one core;
  - RSS per side: VmHWM (peak) polled from /proc/PID/status every 100 ms until
    the process exits (caller) or the call has ended (listener), and the
    median VmRSS over the connected window.
* scenario "accept": ``callctl listen`` (no --auto-accept) rings; RING_S
  seconds after its ``call.incoming`` event, ``callctl --as bob accept`` is
  run.  accept -> first audio = the caller's ``media.flowing`` ts minus the
  callee's ``call.connecting`` ts (emitted when the listener processes the
  accept command).

baresip (the reference in ../shared/anchors/baresip, copied to a temp dir and
run as ``RUNS=1 DUR=DURATION run.sh dtls``: ICE + DTLS-SRTP, Opus 48 kHz,
caller A dials callee B which answers automatically).  Its per-run line is
parsed; what we compare with:

* start -> media: ``ready_ms_A`` (process start to "baresip is ready") +
  ``first_rtp_ms_A`` (dial to "incoming rtp for 'audio' established" at A);
  the 0.5 s the anchor idles between ready and dial is left out;
* dial -> connected: ``dtls_ms_A`` (dial to "DTLS-SRTP complete" at A, the
  point where callctl's peer connection reports "connected"); the anchor's own
  ``setup_ms_A`` is SIP CALL_ESTABLISHED, before ICE/DTLS, and shown for
  reference only;
* CPU: ``cpu_pct_A`` / ``cpu_pct_B`` (utime+stime over DURATION s after
  CALL_ESTABLISHED); RSS: ``peak_rss_mb_A/B`` (VmHWM) and ``rss_mb_A/B``
  (VmRSS at the end of the call window).

The runs are interleaved (baresip, callctl auto, callctl accept; repeat) so
that drifting background load hits both sides alike.  Before them, one
unmeasured ring-and-accept call fills the children's bytecode cache
(PYTHONPYCACHEPREFIX in the temp dir; PYTHONDONTWRITEBYTECODE is dropped), as
an installed package has it.

Children run in their own process groups and are killed on exit, error,
timeout or Ctrl-C.  Exit status: 0 every target met, 1 a target missed, 2 the
benchmark could not run, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cli"))  # run from a checkout without installing too

from callctl.harness import bench, machine, procfs, stats  # noqa: E402
from callctl.harness.bench import BenchError, log  # noqa: E402
from callctl.harness.child import Child, ChildError, EventHook, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess, ServerError  # noqa: E402

DEFAULT_ANCHOR = REPO.parent / "shared" / "anchors" / "baresip"

# targets (from the issue)
TARGET_START_RATIO = 2.0  # start -> media, x baresip
TARGET_SETUP_MS = 100.0  # dial -> connected
TARGET_ACCEPT_MS = 30.0  # accept -> first audio frame at the caller
TARGET_CPU_RATIO = 2.0  # CPU per side, x baresip
TARGET_RSS_MB = 60.0  # per side, MiB

EVENT_TIMEOUT_S = 20.0


# ------------------------------------------------------------------- processes

_PROCS: list[Proc] = []
_PROCS_LOCK = threading.Lock()


class Proc(Child):
    """A child whose memory the Sampler polls: peak RSS, and RSS over a window when one is open."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path,
                 on_event: EventHook | None = None) -> None:
        super().__init__(argv, name=name, env=env, stderr=logdir / f"{name}.err", on_event=on_event)
        self.hwm_kib = 0
        self.rss_window: list[int] | None = None
        with _PROCS_LOCK:
            _PROCS.append(self)

    def expect(self, event: str, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        """The first ``event``; BenchError when the call ends first or it does not come."""
        try:
            return self.wait_event(event, timeout=timeout,
                                   fail_on=None if event == "call.ended" else "call.ended")
        except ChildError as exc:
            raise BenchError(str(exc)) from None

    def sample(self) -> None:
        st = procfs.memory_kib(self.pid)
        if "VmHWM" in st:
            self.hwm_kib = max(self.hwm_kib, st["VmHWM"])
        window = self.rss_window
        if window is not None and "VmRSS" in st:
            window.append(st["VmRSS"])

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
        try:
            return super().stop(sig, grace)
        finally:
            with _PROCS_LOCK:
                if self in _PROCS:
                    _PROCS.remove(self)


def kill_all() -> None:
    with _PROCS_LOCK:
        procs = list(_PROCS)
    for p in procs:
        with contextlib.suppress(Exception):
            p.stop(grace=2.0)


class Sampler(threading.Thread):
    """Polls VmHWM / VmRSS of every live child every 100 ms."""

    def __init__(self) -> None:
        super().__init__(name="sampler", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            with _PROCS_LOCK:
                procs = list(_PROCS)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(Exception):
                        p.sample()


# --------------------------------------------------------------------- callctl


class Callctl:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.args = args
        self.exe = str(REPO / ".venv" / "bin" / "callctl")
        if not os.access(self.exe, os.X_OK):
            raise BenchError(f"{self.exe} missing: run scripts/setup")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCTL_")}
        # Bytecode as a normal install has it: cached .pyc (this environment may set
        # PYTHONDONTWRITEBYTECODE), kept out of the source tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.base_env = callctl_env(env, PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
        self.server: ServerProcess | None = None

    def warm_up(self) -> None:
        """Fill the bytecode cache once, so that no measured start compiles anything."""
        code = ("import callctl.app, callctl.commands._phone, callctl.commands.control, "
                "callctl.engine.phone, callctl.engine.control, callctl.signaling.client, "
                "callctl.media.assembly, callctl.media.registry, callctl.ui.output, aiortc, av, numpy")
        r = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code], env=self.base_env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if r.returncode != 0:
            raise BenchError(f"warm-up import failed: {r.stderr.decode(errors='replace')[-1500:]}")

    def start_server(self) -> None:
        d = self.tmp / "server"
        d.mkdir()
        self.server = ServerProcess(d, ["--log-level", "warning"], command=[self.exe],
                                    env=self.base_env)
        try:
            self.server.start()
        except ServerError as exc:
            raise BenchError(str(exc)) from None
        log(f"callctl server on {self.server.url} (pid {self.server.pid})")

    def env(self, rundir: Path) -> dict[str, str]:
        (rundir / "run").mkdir(parents=True, exist_ok=True)
        os.chmod(rundir / "run", 0o700)
        assert self.server is not None
        return callctl_env(
            self.base_env,
            CALLCTL_SECRET_FILE=str(self.server.secret_file),
            CALLCTL_SERVER=self.server.url,
            XDG_RUNTIME_DIR=str(rundir / "run"),
            XDG_CONFIG_HOME=str(rundir / "config"),
            XDG_STATE_HOME=str(rundir / "state"),
        )

    def listen(self, rundir: Path, env: dict[str, str], auto: bool) -> Proc:
        argv = [self.exe, "--json", "--as", "bob", "listen", *(["--auto-accept"] if auto else []),
                "--audio-in", "tone:660", "--audio-out", "null", "--device", "kiosk"]
        p = Proc("callee", argv, env, rundir)
        p.expect("registered")
        return p

    def call(self, rundir: Path, env: dict[str, str], hangup_after: float,
             on_event: EventHook | None = None) -> Proc:
        argv = [self.exe, "--json", "--as", "alice", "call", "bob", "--audio-in", "tone:440",
                "--audio-out", "null", "--device", "desk", "--hangup-after", f"{hangup_after:g}"]
        return Proc("caller", argv, env, rundir, on_event=on_event)

    # ---------------------------------------------------------------- scenarios
    def run_auto(self, i: int) -> dict[str, float]:
        """Listener already online and auto-answering; one DURATION-second call."""
        dur = self.args.duration
        rundir = self.tmp / f"run{i}-auto"
        env = self.env(rundir)
        callee = self.listen(rundir, env, auto=True)
        try:
            time.sleep(self.args.settle)  # let the listener's start-up settle
            window: dict[str, Any] = {}

            def connected(caller: Child, rec: dict[str, Any]) -> None:  # in the reader thread
                if rec["event"] != "call.connected":
                    return
                window["t0"] = time.monotonic()
                window["c0"] = cpu_seconds(caller, callee)
                window["m0"] = cpu_seconds(caller, callee, main_thread=True)
                assert isinstance(caller, Proc)
                caller.rss_window, callee.rss_window = [], []

            caller = self.call(rundir, env, hangup_after=dur + 2.0, on_event=connected)
            try:
                con = caller.expect("call.connected")
                flowing = caller.expect("media.flowing", 10)
                while "t0" not in window:
                    time.sleep(0.001)
                py_spy = self._py_spy(i, caller, callee)
                time.sleep(max(0.0, window["t0"] + dur - time.monotonic()))
                t1 = time.monotonic()
                c1 = cpu_seconds(caller, callee)
                m1 = cpu_seconds(caller, callee, main_thread=True)
                span = t1 - window["t0"]
                rss_c, rss_e = caller.rss_window or [0], callee.rss_window or [0]
                caller.rss_window = callee.rss_window = None
                for p in py_spy:
                    p.wait_exit(30)
                    p.stop()
                if caller.find("call.ended") is not None:
                    raise BenchError(f"caller: call ended early: {caller.find('call.ended')}")
                caller.expect("call.ended", dur + 15)
                if caller.wait_exit(15) is None:
                    raise BenchError("caller did not exit after its call ended")
                callee.expect("call.ended", 10)
                callee.sample()
            finally:
                caller.stop()
            ev = {e["event"]: e for e in reversed(caller.events)}
            r = {
                "start_to_media_ms": (flowing["ts"] - caller.t_spawn) * 1e3,
                "start_to_registered_ms": (ev["registered"]["ts"] - caller.t_spawn) * 1e3,
                "dial_to_media_ms": (flowing["ts"] - ev["call.outgoing"]["ts"]) * 1e3,
                "setup_ms": float(con["setup_ms"]),
                "dial_to_answer_ms": (ev["call.connecting"]["ts"] - ev["call.outgoing"]["ts"]) * 1e3,
                "answer_to_connected_ms": (con["ts"] - ev["call.connecting"]["ts"]) * 1e3,
                "connected_to_media_ms": (flowing["ts"] - con["ts"]) * 1e3,
                "cpu_pct_caller": 100 * (c1[0] - window["c0"][0]) / span,
                "cpu_pct_callee": 100 * (c1[1] - window["c0"][1]) / span,
                "cpu_main_pct_caller": 100 * (m1[0] - window["m0"][0]) / span,
                "cpu_main_pct_callee": 100 * (m1[1] - window["m0"][1]) / span,
                "hwm_mb_caller": caller.hwm_kib / 1024,
                "hwm_mb_callee": callee.hwm_kib / 1024,
                "rss_mb_caller": (stats.percentile(rss_c, 50) or 0) / 1024,
                "rss_mb_callee": (stats.percentile(rss_e, 50) or 0) / 1024,
                "window_s": span,
            }
            return r
        finally:
            callee.stop()

    def run_accept(self, i: int) -> dict[str, float]:
        """Listener rings; `callctl accept` after RING_S s; accept -> first audio at the caller."""
        rundir = self.tmp / (f"run{i}-accept" if i >= 0 else "warm-up")
        env = self.env(rundir)
        callee = self.listen(rundir, env, auto=False)
        caller = None
        try:
            time.sleep(self.args.settle)
            caller = self.call(rundir, env, hangup_after=3.0)
            callee.expect("call.incoming")
            time.sleep(self.args.ring)
            if callee.find("call.connecting") is not None:
                raise BenchError("callee connected before accept")
            acc = Proc("accept", [self.exe, "--as", "bob", "accept"], env, rundir)
            try:
                code = acc.wait_exit(30)
            finally:
                acc.stop()
            if code != 0:
                raise BenchError(f"callctl accept exited {code}; {acc.describe()}")
            connecting = callee.expect("call.connecting")
            flowing = caller.expect("media.flowing", 10)
            c_con = caller.expect("call.connected", 10)
            e_flow = callee.expect("media.flowing", 10)
            e_con = callee.expect("call.connected", 10)
            caller.expect("call.ended", 20)
            caller.wait_exit(10)
            return {
                "accept_to_media_ms": (flowing["ts"] - connecting["ts"]) * 1e3,
                "accept_to_callee_media_ms": (e_flow["ts"] - connecting["ts"]) * 1e3,
                "accept_to_caller_connected_ms": (c_con["ts"] - connecting["ts"]) * 1e3,
                "accept_to_callee_connected_ms": (e_con["ts"] - connecting["ts"]) * 1e3,
                "accept_cmd_ms": (connecting["ts"] - acc.t_spawn) * 1e3,
            }
        finally:
            if caller is not None:
                caller.stop()
            callee.stop()

    def _py_spy(self, i: int, caller: Proc, callee: Proc) -> list[Proc]:
        if not self.args.py_spy or i != 0:
            return []
        exe = bench.py_spy()
        if exe is None:
            log("py-spy not found (.venv/bin/pip install py-spy): no profile")
            return []
        out = Path(self.args.py_spy)
        out.mkdir(parents=True, exist_ok=True)
        d = max(1, int(self.args.duration) - 2)
        procs = []
        for who, p in (("caller", caller), ("callee", callee)):
            argv = [exe, "record", "--pid", str(p.pid), "--duration", str(d), "--rate", "250",
                    "--gil", "--threads", "--nonblocking", "--format", "raw",
                    "-o", str(out / f"{who}.txt")]
            procs.append(Proc(f"py-spy-{who}", argv, self.base_env, self.tmp))
        log(f"py-spy recording caller and callee for {d} s into {out}/{{caller,callee}}.txt "
            "(collapsed stacks of the thread holding the GIL; run 0's CPU figures include "
            "py-spy's sampling overhead)")
        return procs

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def cpu_seconds(caller: Child, callee: Child, main_thread: bool = False) -> tuple[float, float]:
    """CPU time of both sides; of their main thread alone (the asyncio event loop) if asked."""
    return tuple(procfs.cpu_seconds(p.pid, p.pid if main_thread else None)  # type: ignore[return-value]
                 for p in (caller, callee))


# --------------------------------------------------------------------- baresip


class Baresip:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        src = Path(args.anchor)
        if not (src / "run.sh").is_file() or not (src / "bench.py").is_file():
            raise BenchError(f"baresip anchor not found at {src} (--anchor)")
        if shutil.which("baresip") is None:
            raise BenchError("baresip is not installed (apt-get install baresip-core)")
        self.dir = tmp / "baresip-bench"
        shutil.copytree(src, self.dir)
        self.args = args
        self.version = ""

    def run(self, i: int) -> dict[str, float] | None:
        env = {**os.environ, "RUNS": "1", "DUR": f"{self.args.duration:g}", "SRC": "ausine", "REC": "0"}
        p = Proc(f"baresip{i}", [str(self.dir / "run.sh"), "dtls"], env, self.dir)
        try:
            code = p.wait_exit(self.args.duration + 120)
            if code is None:
                log(f"baresip run {i}: still running after {self.args.duration + 120:g} s: killed")
                return None
        finally:
            p.stop()
        lines = p.lines
        run_line = next((ln for ln in lines if ln.startswith("run 0:")), None)
        if code != 0 or run_line is None:
            log(f"baresip run {i} failed (exit {code}): {' | '.join(lines[-5:])}; "
                f"{p.describe(800)}")
            return None
        r = {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+|nan)", run_line)}
        r["start_to_media_ms"] = r["ready_ms_A"] + r["first_rtp_ms_A"]
        if not self.version:
            with contextlib.suppress(Exception):
                out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "baresip-core"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.version = out.strip()
        return r


# ---------------------------------------------------------------------- report


def med(runs: list[dict[str, float]], key: str) -> float | None:
    return stats.summary(r.get(key) for r in runs)["p50"]


def spread(runs: list[dict[str, float]], key: str) -> tuple[float, float] | None:
    got = stats.summary(r.get(key) for r in runs)
    return None if got["n"] == 0 else (got["min"], got["max"])  # type: ignore[return-value]


def build_rows(auto: list[dict], acc: list[dict], bare: list[dict]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(key: str, label: str, ours_runs: list[dict], ours_key: str, ref_key: str | None,
            unit: str, target: str | None = None, check: Callable[..., bool | None] | None = None,
            info: bool = False) -> None:
        ours = med(ours_runs, ours_key)
        ref = med(bare, ref_key) if ref_key else None
        ratio = ours / ref if ours is not None and ref else None
        ok = check(ours, ref, ratio) if check is not None else None
        rows.append({
            "key": key, "label": label, "unit": unit, "callctl": ours, "baresip": ref,
            "ratio": ratio, "target": target, "result": None if info else
            ("n/a" if ok is None else ("PASS" if ok else "MISS")),
            "callctl_range": spread(ours_runs, ours_key),
        })

    def ratio_le(limit: float) -> Callable[..., bool | None]:
        return lambda ours, ref, ratio: None if ratio is None else ratio <= limit

    def abs_le(limit: float) -> Callable[..., bool | None]:
        return lambda ours, ref, ratio: None if ours is None else ours <= limit

    row("start_to_media", "1. caller start -> media flowing, ms", auto, "start_to_media_ms",
        "start_to_media_ms", "ms", f"<= {TARGET_START_RATIO:g}x baresip", ratio_le(TARGET_START_RATIO))
    row("start_to_ready", "   start -> online (registered/ready), ms", auto, "start_to_registered_ms",
        "ready_ms_A", "ms", info=True)
    row("dial_to_media", "   dial -> first remote audio, ms", auto, "dial_to_media_ms",
        "first_rtp_ms_A", "ms", info=True)
    row("setup", "2. dial -> connected (ICE+DTLS), ms", auto, "setup_ms", "dtls_ms_A", "ms",
        f"<= {TARGET_SETUP_MS:g} ms", abs_le(TARGET_SETUP_MS))
    row("dial_to_answer", "   dial -> answer at caller (signaling), ms", auto, "dial_to_answer_ms",
        None, "ms", info=True)
    row("answer_to_connected", "   answer -> connected (rest of ICE+DTLS), ms", auto,
        "answer_to_connected_ms", None, "ms", info=True)
    row("connected_to_media", "   connected -> first remote audio, ms", auto, "connected_to_media_ms",
        None, "ms", info=True)
    row("accept_to_media", "3. accept -> first audio at caller, ms", acc, "accept_to_media_ms", None,
        "ms", f"<= {TARGET_ACCEPT_MS:g} ms", abs_le(TARGET_ACCEPT_MS))
    row("accept_to_caller_connected", "   accept -> caller connected, ms", acc,
        "accept_to_caller_connected_ms", None, "ms", info=True)
    row("accept_to_callee_connected", "   accept -> callee connected (answer POST), ms", acc,
        "accept_to_callee_connected_ms", None, "ms", info=True)
    row("accept_to_callee_media", "   accept -> first audio at callee, ms", acc,
        "accept_to_callee_media_ms", None, "ms", info=True)
    row("accept_cmd", "   `callctl accept` spawn -> accepted, ms", acc, "accept_cmd_ms", None, "ms",
        info=True)
    row("cpu_caller", "4. CPU caller, % of one core", auto, "cpu_pct_caller", "cpu_pct_A", "%",
        f"<= {TARGET_CPU_RATIO:g}x baresip", ratio_le(TARGET_CPU_RATIO))
    row("cpu_callee", "   CPU callee, % of one core", auto, "cpu_pct_callee", "cpu_pct_B", "%",
        f"<= {TARGET_CPU_RATIO:g}x baresip", ratio_le(TARGET_CPU_RATIO))
    row("cpu_main_caller", "   of which main thread (event loop), caller", auto,
        "cpu_main_pct_caller", None, "%", info=True)
    row("cpu_main_callee", "   of which main thread (event loop), callee", auto,
        "cpu_main_pct_callee", None, "%", info=True)
    row("hwm_caller", "5. peak RSS caller (VmHWM), MiB", auto, "hwm_mb_caller", "peak_rss_mb_A", "MiB",
        f"<= {TARGET_RSS_MB:g} MiB", abs_le(TARGET_RSS_MB))
    row("hwm_callee", "   peak RSS callee (VmHWM), MiB", auto, "hwm_mb_callee", "peak_rss_mb_B", "MiB",
        f"<= {TARGET_RSS_MB:g} MiB", abs_le(TARGET_RSS_MB))
    row("rss_caller", "   RSS caller in call (VmRSS), MiB", auto, "rss_mb_caller", "rss_mb_A", "MiB",
        f"<= {TARGET_RSS_MB:g} MiB", abs_le(TARGET_RSS_MB))
    row("rss_callee", "   RSS callee in call (VmRSS), MiB", auto, "rss_mb_callee", "rss_mb_B", "MiB",
        f"<= {TARGET_RSS_MB:g} MiB", abs_le(TARGET_RSS_MB))
    return rows


def _f(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "%":
        return f"{v:.2f}"
    return f"{v:.1f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("metric", "callctl", "(min-max)", "baresip", "ratio", "target", "result")
    lines = []
    body = []
    for r in rows:
        rng = r["callctl_range"]
        body.append((
            r["label"],
            _f(r["callctl"], r["unit"]),
            "-" if rng is None else f"{_f(rng[0], r['unit'])}-{_f(rng[1], r['unit'])}",
            _f(r["baresip"], r["unit"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"] or "",
            r["result"] or "",
        ))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i in (0, 5, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()
    lines.append(fmt_row(head))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt_row(b) for b in body)
    return "\n".join(lines)


# ------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="callctl 1:1 audio calls on loopback vs a baresip ICE+DTLS-SRTP call, "
                    "side by side; medians of --runs runs.")
    ap.add_argument("--runs", type=int, default=3, help="runs of each scenario (3)")
    ap.add_argument("--duration", type=float, default=30.0,
                    help="seconds of connected call for CPU/RSS, both clients (30)")
    ap.add_argument("--ring", type=float, default=1.0,
                    help="seconds the listener rings before `callctl accept` (1.0)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="idle seconds between the listener being online and the dial (0.5)")
    ap.add_argument("--anchor", default=str(DEFAULT_ANCHOR),
                    help=f"baresip anchor folder, copied to a temp dir ({DEFAULT_ANCHOR})")
    ap.add_argument("--no-baresip", action="store_true",
                    help="callctl only (ratios and ratio targets become n/a)")
    ap.add_argument("--py-spy", metavar="DIR",
                    help="record py-spy profiles (collapsed stacks) of caller and callee during run 0's call")
    ap.add_argument("--timeout", type=float, default=None,
                    help="hard overall limit in s (default: runs x (2 x duration + 120) + 60)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON summary line on stdout (the table goes to stderr)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.duration < 2:
        ap.error("--runs >= 1 and --duration >= 2")
    if args.timeout is None:
        args.timeout = args.runs * (2 * args.duration + 120) + 60
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not procfs.available():
        log("needs Linux /proc")
        return bench.CANNOT_RUN
    bench.stop_on_signals(args.timeout)

    tmp = Path(tempfile.mkdtemp(prefix="callctl-bench-calls-"))
    sampler = Sampler()
    sampler.start()
    cc: Callctl | None = None
    code = bench.CANNOT_RUN
    try:
        mach = machine.describe(REPO, ("aiortc", "aioice", "av"))
        mach["loadavg_start"] = mach.pop("loadavg")
        log(f"{mach['cpus']} CPUs, {mach['cpu_model']}; load {mach['loadavg_start']}; tmp {tmp}")
        cc = Callctl(tmp, args)
        log("warming the bytecode cache")
        cc.warm_up()
        cc.start_server()
        log("warm-up call (not measured): fills the bytecode cache for every module a call, "
            "a listener and `callctl accept` import")
        cc.run_accept(-1)
        bs = None
        if not args.no_baresip:
            try:
                bs = Baresip(tmp, args)
            except BenchError as exc:
                log(f"{exc}: callctl only, the baresip columns and ratio targets are n/a")
        auto: list[dict] = []
        acc: list[dict] = []
        bare: list[dict] = []
        for i in range(args.runs):
            if bs is not None:
                log(f"run {i + 1}/{args.runs}: baresip dtls ({args.duration:g} s call)")
                r = bs.run(i)
                if r is not None:
                    bare.append(r)
                    log(f"  baresip: start->media {r['start_to_media_ms']:.1f} ms (ready "
                        f"{r['ready_ms_A']:.1f} + first rtp {r['first_rtp_ms_A']:.1f}), dtls "
                        f"{r.get('dtls_ms_A', float('nan')):.1f} ms, cpu {r['cpu_pct_A']:.2f}/"
                        f"{r['cpu_pct_B']:.2f} %, peak {r['peak_rss_mb_A']:.1f}/"
                        f"{r['peak_rss_mb_B']:.1f} MiB")
            log(f"run {i + 1}/{args.runs}: callctl auto-accept ({args.duration:g} s call)")
            r = cc.run_auto(i)
            auto.append(r)
            log(f"  callctl: start->media {r['start_to_media_ms']:.1f} ms (online "
                f"{r['start_to_registered_ms']:.1f}, dial->media {r['dial_to_media_ms']:.1f}), "
                f"setup {r['setup_ms']:.1f} ms, cpu {r['cpu_pct_caller']:.2f}/"
                f"{r['cpu_pct_callee']:.2f} %, peak {r['hwm_mb_caller']:.1f}/"
                f"{r['hwm_mb_callee']:.1f} MiB")
            log(f"run {i + 1}/{args.runs}: callctl ring + `callctl accept` after {args.ring:g} s")
            r = cc.run_accept(i)
            acc.append(r)
            log(f"  callctl: accept->caller media {r['accept_to_media_ms']:.1f} ms, accept->caller "
                f"connected {r['accept_to_caller_connected_ms']:.1f} ms, accept cmd "
                f"{r['accept_cmd_ms']:.1f} ms")
        if bs is not None and not bare:
            log("baresip: no successful run; baresip columns are n/a")
        mach["loadavg_end"] = machine.loadavg()
        if bs is not None:
            mach["baresip"] = bs.version
        rows = build_rows(auto, acc, bare)
        table = format_table(rows)
        header = (f"callctl call benchmark: {args.runs} run(s), {args.duration:g} s calls, medians; "
                  f"{mach['cpus']} CPUs ({mach['cpu_model']}), load {mach['loadavg_start']} -> "
                  f"{mach['loadavg_end']}; callctl {mach.get('revision', '?')}, "
                  f"aiortc {mach.get('aiortc', '?')}, baresip "
                  f"{mach.get('baresip') or 'n/a'} (dtls: ICE + DTLS-SRTP, Opus)")
        missed = [r["key"] for r in rows if r["result"] == "MISS"]
        summary = {
            "bench": "calls", "runs": args.runs, "duration_s": args.duration, "ring_s": args.ring,
            "machine": mach,
            "metrics": {r["key"]: {k: r[k] for k in ("callctl", "baresip", "ratio", "target",
                                                     "result", "unit")} for r in rows},
            "missed": missed,
            "raw": {"callctl_auto": auto, "callctl_accept": acc, "baresip": bare},
        }
        out = sys.stderr if args.json else sys.stdout
        print(header, file=out)
        print(table, file=out, flush=True)
        if args.json:
            print(json.dumps(summary, sort_keys=True), flush=True)
        code = bench.MISSED if missed else bench.MET
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc})")
        code = bench.INTERRUPTED
    except TimeoutError as exc:
        log(f"timeout: {exc}")
        code = bench.CANNOT_RUN
    except BenchError as exc:
        log(f"error: {exc}")
        server = cc.server.proc if cc is not None and cc.server is not None else None
        if server is not None and server.returncode is not None:
            log(f"the callctl server had exited: {server.describe()}")
        code = bench.CANNOT_RUN
    finally:
        bench.cleaning_up()
        kill_all()
        if cc is not None:
            cc.stop()
        sampler.stopped.set()
        bench.keep_or_remove(tmp, args.keep_tmp or code == bench.CANNOT_RUN)
    return code


if __name__ == "__main__":
    sys.exit(main())
