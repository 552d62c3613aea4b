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
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ANCHOR = REPO.parent / "shared" / "anchors" / "baresip"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# targets (from the issue)
TARGET_START_RATIO = 2.0  # start -> media, x baresip
TARGET_SETUP_MS = 100.0  # dial -> connected
TARGET_ACCEPT_MS = 30.0  # accept -> first audio frame at the caller
TARGET_CPU_RATIO = 2.0  # CPU per side, x baresip
TARGET_RSS_MB = 60.0  # per side, MiB

EVENT_TIMEOUT_S = 20.0


class BenchError(Exception):
    """The benchmark cannot go on."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc bits


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def main_thread_cpu_s(pid: int) -> float:
    """utime + stime of the main thread alone (the asyncio event loop in callctl)."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _pdeathsig() -> None:
    # die with the benchmark, whatever happens to it (the spawning thread is the main thread)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ------------------------------------------------------------------- processes

_PROCS: list[Proc] = []
_PROCS_LOCK = threading.Lock()


Hook = Callable[["Proc", dict[str, Any]], None]


class Proc:
    """A child in its own process group; NDJSON stdout parsed into events; /proc polled."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path,
                 json_events: bool = True,
                 hooks: dict[str, list[Hook]] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.cond = threading.Condition()
        self.hooks = hooks or {}
        self.hwm_kib = 0
        self.rss_window: list[int] | None = None
        self.err_path = logdir / f"{name}.err"
        err = open(self.err_path, "wb")  # noqa: SIM115
        try:
            self.t_spawn = time.time()
            self.p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env,
                start_new_session=True, preexec_fn=_pdeathsig,
            )
        finally:
            err.close()
        with _PROCS_LOCK:
            _PROCS.append(self)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._json = json_events
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            rec = None
            if self._json and line.startswith("{"):
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
            if not isinstance(rec, dict) or "event" not in rec:
                with self.cond:
                    self.other.append(line)
                    self.cond.notify_all()
                continue
            rec["_rx"] = time.time()
            for fn in self.hooks.get(rec["event"], []):
                try:
                    fn(self, rec)
                except Exception as exc:  # a hook must not kill the reader
                    log(f"{self.name}: hook for {rec['event']} failed: {exc}")
            with self.cond:
                self.events.append(rec)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def find(self, event: str) -> dict[str, Any] | None:
        with self.cond:
            return next((e for e in self.events if e["event"] == event), None)

    def wait_event(self, event: str, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if e["event"] == event:
                        return e
                    if e["event"] == "call.ended" and event != "call.ended":
                        raise BenchError(f"{self.name}: call ended ({e.get('reason')}) before {event}"
                                         f"; events {self.names()}{self.stderr_tail()}")
                left = end - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self._reader.is_alive()):
                    raise BenchError(f"{self.name}: no {event} within {timeout:g} s; events "
                                     f"{self.names()}; exit {self.p.poll()}{self.stderr_tail()}")
                self.cond.wait(min(left, 0.2))

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def stderr_tail(self, n: int = 1500) -> str:
        with contextlib.suppress(OSError):
            text = self.err_path.read_text(errors="replace").strip()
            if text:
                return f"\n--- {self.name} stderr (tail):\n{text[-n:]}"
        return ""

    def sample(self) -> None:
        st = status_kib(self.pid)
        if "VmHWM" in st:
            self.hwm_kib = max(self.hwm_kib, st["VmHWM"])
        window = self.rss_window
        if window is not None and "VmRSS" in st:
            window.append(st["VmRSS"])

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL; always reaps."""
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # anything left in the group (e.g. baresip under run.sh), and the leader if still there
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.p.wait(5)
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
                if p.p.poll() is None:
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
        self.base_env = dict(os.environ)
        for key in list(self.base_env):
            if key.startswith("CALLCTL_"):
                del self.base_env[key]
        # Bytecode as a normal install has it: cached .pyc (this environment may set
        # PYTHONDONTWRITEBYTECODE), kept out of the source tree.
        self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.base_env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        self.base_env["PYTHONUNBUFFERED"] = "1"
        self.server: Proc | None = None
        self.url = ""

    def warm_up(self) -> None:
        """Fill the bytecode cache once, so that no measured start compiles anything."""
        code = ("import callctl.app, callctl.commands._phone, callctl.commands.control, "
                "callctl.engine.session, callctl.engine.control, callctl.signaling.client, "
                "callctl.media.rtc, callctl.media.registry, callctl.ui.output, aiortc, av, numpy")
        r = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code], env=self.base_env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if r.returncode != 0:
            raise BenchError(f"warm-up import failed: {r.stderr.decode(errors='replace')[-1500:]}")

    def start_server(self) -> None:
        d = self.tmp / "server"
        d.mkdir()
        self.server = Proc("server", [self.exe, "server", "--port", "0", "--secret-file",
                                      str(d / "secret"), "--log-level", "warning"],
                           self.base_env, d, json_events=False)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with self.server.cond:
                for line in self.server.other:
                    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
                    if m:
                        self.url = m.group(1)
                        self.secret = d / "secret"
                        log(f"callctl server on {self.url} (pid {self.server.pid})")
                        return
                if self.server.p.poll() is not None:
                    break
                self.server.cond.wait(0.2)
        raise BenchError(f"callctl server did not start{self.server.stderr_tail()}")

    def env(self, rundir: Path) -> dict[str, str]:
        (rundir / "run").mkdir(parents=True, exist_ok=True)
        os.chmod(rundir / "run", 0o700)
        return {
            **self.base_env,
            "CALLCTL_SECRET_FILE": str(self.secret),
            "CALLCTL_SERVER": self.url,
            "XDG_RUNTIME_DIR": str(rundir / "run"),
            "XDG_CONFIG_HOME": str(rundir / "config"),
            "XDG_STATE_HOME": str(rundir / "state"),
        }

    def listen(self, rundir: Path, env: dict[str, str], auto: bool) -> Proc:
        argv = [self.exe, "--json", "--as", "bob", "listen", *(["--auto-accept"] if auto else []),
                "--audio-in", "tone:660", "--audio-out", "null", "--device", "kiosk"]
        p = Proc("callee", argv, env, rundir)
        p.wait_event("registered")
        return p

    def call(self, rundir: Path, env: dict[str, str], hangup_after: float,
             hooks: dict[str, list[Hook]] | None = None) -> Proc:
        argv = [self.exe, "--json", "--as", "alice", "call", "bob", "--audio-in", "tone:440",
                "--audio-out", "null", "--device", "desk", "--hangup-after", f"{hangup_after:g}"]
        return Proc("caller", argv, env, rundir, hooks=hooks)

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

            def connected(caller: Proc, _rec: dict[str, Any]) -> None:  # in the reader thread
                window["t0"] = time.monotonic()
                window["c0"] = (cpu_s(caller.pid), cpu_s(callee.pid))
                window["m0"] = (main_thread_cpu_s(caller.pid), main_thread_cpu_s(callee.pid))
                caller.rss_window, callee.rss_window = [], []

            caller = self.call(rundir, env, hangup_after=dur + 2.0,
                               hooks={"call.connected": [connected]})
            try:
                con = caller.wait_event("call.connected")
                flowing = caller.wait_event("media.flowing", 10)
                while "t0" not in window:
                    time.sleep(0.001)
                py_spy = self._py_spy(i, caller, callee)
                time.sleep(max(0.0, window["t0"] + dur - time.monotonic()))
                t1 = time.monotonic()
                c1 = (cpu_s(caller.pid), cpu_s(callee.pid))
                m1 = (main_thread_cpu_s(caller.pid), main_thread_cpu_s(callee.pid))
                span = t1 - window["t0"]
                rss_c, rss_e = caller.rss_window or [0], callee.rss_window or [0]
                caller.rss_window = callee.rss_window = None
                for p in py_spy:
                    p.wait_exit(30)
                    p.stop()
                if caller.find("call.ended") is not None:
                    raise BenchError(f"caller: call ended early: {caller.find('call.ended')}")
                caller.wait_event("call.ended", dur + 15)
                if caller.wait_exit(15) is None:
                    raise BenchError("caller did not exit after its call ended")
                callee.wait_event("call.ended", 10)
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
                "rss_mb_caller": statistics.median(rss_c) / 1024,
                "rss_mb_callee": statistics.median(rss_e) / 1024,
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
            callee.wait_event("call.incoming")
            time.sleep(self.args.ring)
            if callee.find("call.connecting") is not None:
                raise BenchError("callee connected before accept")
            acc = Proc("accept", [self.exe, "--as", "bob", "accept"], env, rundir, json_events=False)
            try:
                code = acc.wait_exit(30)
            finally:
                acc.stop()
            if code != 0:
                raise BenchError(f"callctl accept exited {code}{acc.stderr_tail()}")
            connecting = callee.wait_event("call.connecting")
            flowing = caller.wait_event("media.flowing", 10)
            c_con = caller.wait_event("call.connected", 10)
            e_flow = callee.wait_event("media.flowing", 10)
            e_con = callee.wait_event("call.connected", 10)
            caller.wait_event("call.ended", 20)
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
        exe = shutil.which("py-spy", path=str(REPO / ".venv" / "bin")) or shutil.which("py-spy")
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
            procs.append(Proc(f"py-spy-{who}", argv, self.base_env, self.tmp, json_events=False))
        log(f"py-spy recording caller and callee for {d} s into {out}/{{caller,callee}}.txt "
            "(collapsed stacks of the thread holding the GIL; run 0's CPU figures include "
            "py-spy's sampling overhead)")
        return procs

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# --------------------------------------------------------------------- baresip


class Baresip:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        src = Path(args.anchor)
        if not (src / "run.sh").is_file() or not (src / "bench.py").is_file():
            raise BenchError(f"baresip anchor not found at {src} (--anchor)")
        self.dir = tmp / "baresip-bench"
        shutil.copytree(src, self.dir)
        self.args = args
        self.version = ""

    def run(self, i: int) -> dict[str, float] | None:
        env = {**os.environ, "RUNS": "1", "DUR": f"{self.args.duration:g}", "SRC": "ausine", "REC": "0"}
        p = Proc(f"baresip{i}", [str(self.dir / "run.sh"), "dtls"], env, self.dir, json_events=False)
        try:
            code = p.wait_exit(self.args.duration + 120)
            if code is None:
                log(f"baresip run {i}: still running after {self.args.duration + 120:g} s: killed")
                return None
            p._reader.join(5)
        finally:
            p.stop()
        with p.cond:
            lines = list(p.other)
        run_line = next((ln for ln in lines if ln.startswith("run 0:")), None)
        if code != 0 or run_line is None:
            log(f"baresip run {i} failed (exit {code}): {' | '.join(lines[-5:])}"
                f"{p.stderr_tail(800)}")
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
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else None


def spread(runs: list[dict[str, float]], key: str) -> tuple[float, float] | None:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return (min(vals), max(vals)) if vals else None


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


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "cli"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        info["revision"] = rev + (" (cli/ modified)" if changed else "")
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-c",
             "import importlib.metadata as m, platform;"
             "print(platform.python_version(), m.version('aiortc'), m.version('aioice'), m.version('av'))"],
            capture_output=True, text=True, timeout=30).stdout.split()
        info.update(dict(zip(("callctl_python", "aiortc", "aioice", "av"), out)))
    return info


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
    if not Path("/proc/self/stat").exists():
        log("needs Linux /proc")
        return 2

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"hard limit of {args.timeout:g} s reached")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout))

    tmp = Path(tempfile.mkdtemp(prefix="callctl-bench-calls-"))
    sampler = Sampler()
    sampler.start()
    cc: Callctl | None = None
    code = 2
    try:
        mach = machine()
        mach["loadavg_start"] = loadavg()
        log(f"{mach['cpus']} CPUs, {mach['cpu_model']}; load {mach['loadavg_start']}; tmp {tmp}")
        cc = Callctl(tmp, args)
        log("warming the bytecode cache")
        cc.warm_up()
        cc.start_server()
        log("warm-up call (not measured): fills the bytecode cache for every module a call, "
            "a listener and `callctl accept` import")
        cc.run_accept(-1)
        bs = None if args.no_baresip else Baresip(tmp, args)
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
        mach["loadavg_end"] = loadavg()
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
        code = 1 if missed else 0
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc})")
        code = 130
    except TimeoutError as exc:
        log(f"timeout: {exc}")
        code = 2
    except BenchError as exc:
        log(f"error: {exc}")
        if cc is not None and cc.server is not None and cc.server.p.poll() is not None:
            log(f"the callctl server had exited with status {cc.server.p.returncode}"
                f"{cc.server.stderr_tail()}")
        code = 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # don't interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kill_all()
        if cc is not None:
            cc.stop()
        sampler.stopped.set()
        if args.keep_tmp or code == 2:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
