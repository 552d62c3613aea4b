"""An accelerated "month" for a kiosk: one ``callctl listen --auto-accept`` process through a bad month.

One real kiosk process (``callctl --json --as kiosk listen --auto-accept
--audio-in mic:Kiosk_Mic --audio-out speaker:Kiosk_Speaker``: a sound card
made of ALSA plugin PCMs, see ``SoundCard``) runs for ``--minutes`` (default
30) while:

- **calls** arrive at random (Poisson, ``--rate`` per second) from ``--callers``
  caller identities that come and go (each is online for a while, then
  offline, then back with a fresh connection).  Callers are ``Phone`` objects
  in this process (as in ``scripts/soak-calls``: a call costs a call, not a
  process start; the machine has 2 cores).  Each call is connected for a
  random length (``--short-share`` of them 1–3 s, the rest 3–20 s): when
  one arrives while the kiosk is in a call it is answered busy, which is
  counted apart and is not a failure;
- **the signaling server is killed** every ``--server-every`` s (SIGKILL) and
  started again on the same port: the kiosk must re-register by itself; the
  time from the new server's ``server.listening`` to the kiosk's
  ``server.restored`` is measured;
- **the kiosk's network is cut** for ``--cut-for`` s every ``--cut-every`` s:
  the kiosk lives in a network namespace (``harness/netns.py``) whose cable
  (veth) is pulled; without namespaces, nftables drops the traffic of the
  kiosk's cgroup (``--cut nft``);
- **the kiosk's sound card is unplugged** every ``--unplug-every`` s, in a
  call when there is one: its microphone and speaker stop (their PCMs' next
  write fails, the streams stop calling back, as a pulled USB card's do) and
  leave ALSA's configuration; ``--unplug-for`` s later the card comes back
  under other names (``Kiosk_Mic2`` ...) and indexes, its microphone another
  tone.  The kiosk must report ``device.lost`` and ``device.restored``, keep
  taking calls, and the next call of 2 s or more must carry audio through the
  new devices both ways: the caller hears the new microphone's tone, the new
  speaker plays the callers' 440 Hz.  An unplug is no disruption for the
  call and ring targets: it must cost no call and no ring.  Without PyAudio
  or root for the card's tmpfs (or with ``--devices tone``) the kiosk runs
  ``--audio-in tone --audio-out null`` and the unplugs are recorded as
  skipped, with why;
- every ``--every`` calls the kiosk is sampled while idle: RSS, open fds,
  threads, asyncio tasks (control socket ``status``).

Rings are checked from the kiosk's own event stream (its ``--json`` stdout):
a call the server accepted while the kiosk was registered, idle, and no
disruption was going on, must show up there as ``call.incoming``; one that
does not is a *missed ring*.

Callers hear the kiosk through a probe (the dominant frequency of each
half second they receive), so every connected call shows whether the
kiosk's microphone reached the far end.

Targets (exit 1 when one is missed): ≥ ``--min-calls`` calls attempted
(2,000 per 30 minutes); 0 missed rings; 0 calls failed outside disruptions;
every device unplug lost, restored and carrying audio both ways afterwards;
kiosk RSS growth < ``--max-rss-growth`` MiB and fd growth 0 after the
kiosk took ``--warm-up`` calls (TCP connections the server closed and the
kiosk's HTTP pool still holds, CLOSE_WAIT, are counted apart: the pool drops
them at its next request); re-register after a server restart p50 and max
≤ ``--max-reregister`` s; the kiosk alive to the end and exiting 0 on SIGTERM.
Exit 2: could not run; 130: interrupted.  Every process, namespace, nftables
table, cgroup, tmpfs and temporary directory is removed on success, failure, Ctrl-C
or SIGTERM.

    scripts/soak                                          # 30 minutes (root: namespaces)
    scripts/soak --minutes 3 --server-every 50 --cut-every 70 --unplug-every 40
    scripts/soak --minutes 5 --scale-periods              # every disruption, 6 times as often
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))  # run from a checkout without installing too

from callctl.harness import bench, machine, netns, procfs, stats  # noqa: E402
from callctl.harness.child import Child, callctl_command, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess  # noqa: E402

KIOSK_USER, KIOSK_DEVICE = "kiosk", "kiosk"
KIOSK_ADDRESS = "203.0.113.10"  # the kiosk's host on the public segment (netns mode)
CALLER_NAMES = ["alice", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
                "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter"]
#: Kiosk events not kept (twice a second in every call).
NOISE = {"media.level"}
_CLONE_NEWNET = 0x40000000


def now() -> float:
    return time.time()


# ------------------------------------------------------------------ the kiosk's event stream


class KioskLog:
    """The kiosk's events as they come (``Child`` reader thread), and its state derived from them."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.online = False
        self.call: str | None = None  # call id between call.incoming and call.ended
        self.connected: str | None = None  # ... between call.connected and call.ended
        self.last_ended = 0.0
        self.incoming = 0

    def hook(self, child: Child, record: dict[str, Any]) -> None:
        name = record.get("event")
        if name in NOISE:
            return
        with self.lock:
            self.events.append(record)
            if name in ("registered", "server.restored"):
                self.online = True
            elif name == "server.lost":
                self.online = False
            elif name == "call.incoming":
                self.call = record.get("call_id")
                self.incoming += 1
            elif name == "call.connected":
                self.connected = record.get("call_id")
            elif name == "call.ended":
                if record.get("call_id") == self.call or self.call is None:
                    self.call = None
                if record.get("call_id") == self.connected or self.connected is None:
                    self.connected = None
                self.last_ended = float(record.get("ts", now()))

    def named(self, name: str, since: float = 0.0) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("event") == name and float(e.get("ts", 0)) >= since]

    def idle(self) -> bool:
        with self.lock:
            return self.call is None


TCP_STATES = {"02": "syn_sent", "03": "syn_recv", "04": "fin_wait1", "05": "fin_wait2", "06": "time_wait",
              "07": "close", "08": "close_wait", "09": "last_ack", "0A": "listen", "0B": "closing"}


def fd_kinds(pid: int) -> dict[str, int]:
    """What a process's open fds are: tcp/udp/unix sockets (seen from its own namespace), pipes, ..."""
    kinds: collections.Counter[str] = collections.Counter()
    sockets: dict[str, str] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
                f = line.split()
                inode = f[6] if proto == "unix" else f[9]
                kind = proto.rstrip("6")
                if kind == "tcp" and f[3] != "01":  # not ESTABLISHED: name the state
                    kind = "tcp_" + TCP_STATES.get(f[3], f[3])
                sockets[inode] = kind
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    kinds[sockets.get(target[8:-1], "socket")] += 1
                elif target.startswith("pipe:"):
                    kinds["pipe"] += 1
                elif target.startswith("anon_inode:"):
                    kinds[target[11:].strip("[]")] += 1
                else:
                    kinds["file"] += 1
    return dict(sorted(kinds.items()))


async def until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


# ------------------------------------------------------------------ cutting the kiosk's network


class Cutter:
    """Pulls the kiosk's cable: a veth in a network namespace, or nftables on its cgroup."""

    method = "none"

    def kiosk_prefix(self) -> list[str]:
        return []

    def cut(self) -> None: ...

    def restore(self) -> None: ...

    def close(self) -> None: ...


class NetnsCutter(Cutter):
    """The kiosk is host ``kiosk`` on the topology's public segment; ``pub`` holds the server and us."""

    method = "netns"

    def __init__(self) -> None:
        self.net = netns.Topology(hosts={"kiosk": netns.Host(netns.PUB, KIOSK_ADDRESS)}, routers={})
        self.net.build()
        self._home: int | None = None

    def enter_pub(self) -> None:
        """Move this process's main thread (and the threads and children it makes) into ``pub``."""
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _setns(os.path.join(netns.NETNS_DIR, self.net.ns(netns.PUB)))

    def leave_pub(self) -> bool:
        """Back to our own namespace (before ``close``: it kills what it finds in ``pub``)."""
        if self._home is None:
            return True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(self._home, _CLONE_NEWNET) != 0:
                return False
            os.close(self._home)
            self._home = None
            return True
        except OSError:
            return False

    def kiosk_prefix(self) -> list[str]:
        return self.net.prefix("kiosk")

    def cut(self) -> None:
        self.net.link_down("kiosk")

    def restore(self) -> None:
        self.net.link_up("kiosk")

    def close(self) -> None:
        if self.leave_pub():
            self.net.close()
        else:
            bench.log(f"could not leave namespace {self.net.ns(netns.PUB)}: left for the next run to remove")


class NftCutter(Cutter):
    """No namespaces: the kiosk runs in a cgroup of its own; a cut drops its sockets' traffic both ways."""

    method = "nft"

    def __init__(self) -> None:
        root = cgroup2_root()
        if root is None:
            raise bench.BenchError("no writable cgroup2 hierarchy for the nftables fallback")
        name = f"callctl-soak-{os.getpid()}"
        self.dir = Path(root) / name
        self.dir.mkdir()
        # nft resolves the path under /sys/fs/cgroup; the level is the depth under the cgroup2 root
        self.nft_path = str(self.dir.relative_to("/sys/fs/cgroup"))
        self.table = f"callctl_soak_{os.getpid()}"

    def kiosk_prefix(self) -> list[str]:
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.dir / "cgroup.procs")]

    def cut(self) -> None:
        rules = "\n".join(f"""    chain {hook} {{
        type filter hook {hook} priority filter - 5; policy accept;
        socket cgroupv2 level 1 "{self.nft_path}" drop
    }}""" for hook in ("input", "output"))
        subprocess.run(["nft", "-f", "-"], input=f"table inet {self.table} {{\n{rules}\n}}\n",
                       text=True, check=True, capture_output=True, timeout=10)

    def restore(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=10)

    def close(self) -> None:
        self.restore()
        for _ in range(50):  # empty once the kiosk is gone
            try:
                self.dir.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        bench.log(f"cgroup {self.dir} not empty: not removed")


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def cgroup2_root() -> str | None:
    """A cgroup2 mount under /sys/fs/cgroup that we may create groups in, else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2" and parts[1].startswith("/sys/fs/cgroup") \
                    and os.access(parts[1], os.W_OK):
                return parts[1]
    return None


def make_cutter(choice: str) -> Cutter:
    if choice in ("auto", "netns"):
        reason = netns.available()
        if reason is None:
            return NetnsCutter()
        if choice == "netns":
            raise bench.BenchError(f"--cut netns: {reason}")
        bench.log(f"no network namespaces ({reason}): cutting with nftables instead")
    if choice in ("auto", "nft"):
        if os.geteuid() == 0 and shutil.which("nft") and cgroup2_root() is not None:
            return NftCutter()
        if choice == "nft":
            raise bench.BenchError("--cut nft needs root, nft and a writable cgroup2 hierarchy")
        bench.log("no nftables/cgroup2 either: the network cuts are skipped")
    return Cutter()


# ------------------------------------------------------------------ the kiosk's sound card

#: What the callers send, and what the kiosk's speaker must play.
CALLER_HZ = 440.0
#: The kiosk's microphone tone, one per plug-in (not the callers' 440, the ringback's 425 or the ring's
#: 800/1000 Hz): the tone a caller hears tells which PCM it came from.
MIC_HZ = (523.0, 659.0, 784.0, 988.0)


def dominant_hz(samples: Any, rate: int = 48000) -> float:
    import numpy as np

    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


class SoundCard:
    """The kiosk's microphone and speaker: ALSA ``file`` plugin PCMs that PortAudio opens like a card.

    As in tests/media/test_replug.py, the kiosk's ``HOME`` holds the
    ``.asoundrc`` that defines them: the microphone plays a raw file holding a
    tone, the speaker writes what it is given to a raw file.  Both also write
    what passes through them to files on a small tmpfs of their own, and that
    is what makes an unplug real from outside the kiosk: filling the tmpfs
    makes the PCMs' next write fail, ALSA's file plugin returns EIO and
    PortAudio's callback thread ends — the streams stop calling back, as a
    USB card's do when it is pulled.  The PCMs leave the configuration at the
    same moment, so reopening fails until the card is plugged back: under
    other names (``Kiosk_Mic2``: ``mic:Kiosk_Mic`` is part of it), behind one
    more PCM (another index), its microphone another tone.
    """

    WANTED = ("Kiosk_Mic", "Kiosk_Speaker")

    def __init__(self, work: Path, tone_s: float) -> None:
        self.dir = work / "card"  # the tmpfs: what the PCMs write
        self.home = work / "alsa-home"
        self.tones = work / "tones"
        self.tone_s = tone_s
        self.generation = 1
        self.plugged = True
        self.mounted = False
        self.devices: list[tuple[int, str]] = []

    def why_not(self) -> str | None:
        """Set the card up; None, or why it cannot be here (the kiosk runs a tone then)."""
        import importlib.util

        if importlib.util.find_spec("pyaudio") is None:
            return "no PyAudio"
        if os.geteuid() != 0:
            return "not root: no tmpfs for the card to fill"
        self.dir.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "callctl-soak-card",
                               str(self.dir)], capture_output=True, text=True)
        if done.returncode != 0:
            return f"cannot mount a tmpfs: {done.stderr.strip()[:200]}"
        self.mounted = True
        self.home.mkdir()
        self.tones.mkdir()
        self.write_config()
        self.devices = self.list_devices()
        names = [n for _, n in self.devices]
        if not all(n in names for n in self.names()):
            return f"PortAudio does not list the card's PCMs (it lists {names})"
        return None

    def names(self, generation: int | None = None) -> tuple[str, str]:
        g = generation or self.generation
        return self.WANTED if g == 1 else (f"{self.WANTED[0]}{g}", f"{self.WANTED[1]}{g}")

    @property
    def mic_hz(self) -> float:
        return MIC_HZ[(self.generation - 1) % len(MIC_HZ)]

    def speaker_file(self, generation: int | None = None) -> Path:
        return self.dir / f"speaker{generation or self.generation}.raw"

    def kiosk_args(self) -> list[str]:
        return ["--audio-in", f"mic:{self.WANTED[0]}", "--audio-out", f"speaker:{self.WANTED[1]}"]

    def tone(self, hz: float) -> Path:
        """A raw tone the microphone plays (from its start at each open: as long as a call)."""
        import numpy as np

        path = self.tones / f"tone{hz:g}.raw"
        if not path.exists():
            t = np.arange(int(48000 * self.tone_s))
            path.write_bytes((np.sin(2 * math.pi * hz * t / 48000) * 8000).astype("<i2").tobytes())
        return path

    def write_config(self) -> None:
        """ALSA's configuration: PCMs ahead of the card's (one per earlier plug-in), then the card's."""
        pcms = [f'pcm.Line_In{k} {{ type file slave.pcm "null" file "/dev/null" format "raw" }}'
                for k in range(1, self.generation)]
        if self.plugged:
            mic, speaker = self.names()
            g = self.generation
            pcms += [f'pcm.{mic} {{ type file slave.pcm "null" file "{self.dir}/mic{g}.raw" '
                     f'infile "{self.tone(self.mic_hz)}" format "raw" }}',
                     f'pcm.{speaker} {{ type file slave.pcm "null" file "{self.speaker_file()}" '
                     'format "raw" }']
        temp = self.home / ".asoundrc.new"
        temp.write_text("".join(f"{line}\n" for line in pcms))
        temp.replace(self.home / ".asoundrc")  # in one step: ALSA never reads half of it

    def list_devices(self) -> list[tuple[int, str]]:
        """PortAudio's devices as the kiosk finds them now: (index, name)."""
        code = ("import json, pyaudio; pa = pyaudio.PyAudio(); print(json.dumps("
                "[(i, pa.get_device_info_by_index(i)['name']) for i in range(pa.get_device_count())]))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "HOME": str(self.home)})
        return [tuple(d) for d in json.loads(out.stdout)] if out.returncode == 0 else []

    def index(self, name: str) -> int | None:
        return next((i for i, n in self.devices if n == name), None)

    def unplug(self) -> None:
        """Pulled: the PCMs leave the configuration, and their next write fails (the tmpfs is full)."""
        self.plugged = False
        self.write_config()
        with contextlib.suppress(OSError), (self.dir / "filler").open("wb") as f:
            block = bytes(1 << 20)
            while True:
                f.write(block)
        with contextlib.suppress(OSError), (self.dir / "filler").open("ab") as f:
            while True:  # the last bytes, unbuffered
                os.write(f.fileno(), b"\0" * 512)

    def replug(self) -> None:
        """Back as the next card: room on the tmpfs, PCMs under new names behind one more PCM."""
        for path in self.dir.iterdir():
            path.unlink()
        self.generation += 1
        self.plugged = True
        self.write_config()
        self.devices = self.list_devices()

    def speaker_hz(self) -> float:
        """The dominant frequency of the last half second the speaker played (0: silent, too little)."""
        import numpy as np

        try:
            with self.speaker_file().open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 48000) & ~1)
                tail = np.frombuffer(f.read(), dtype="<i2")
        except OSError:
            return 0.0
        if tail.size < 24000 or np.abs(tail).max() < 1000:
            return 0.0
        return dominant_hz(tail)

    def close(self) -> None:
        if self.mounted and subprocess.run(["umount", str(self.dir)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)  # the kiosk still held it
        self.mounted = False


class HeardTone:
    """A caller's speaker: the dominant frequency of each loud half second it receives.

    Registered as the audio sink ``probe:USER`` (``Caller``); what a call's
    sinks heard is the attempt's ``heard`` ({Hz: half seconds}).
    """

    #: USER -> the probes opened for the call that user is placing now
    open_now: dict[str, list[HeardTone]] = {}

    def __init__(self, user: str) -> None:
        self.name = f"probe:{user}"
        self.frames = 0
        self.heard: collections.Counter[int] = collections.Counter()
        self._block: list[Any] = []
        HeardTone.open_now.setdefault(user, []).append(self)

    def write(self, pcm: Any) -> None:
        import numpy as np

        self.frames += 1
        self._block.append(pcm)
        if len(self._block) == 25:
            block = np.concatenate(self._block)
            self._block = []
            if np.abs(block).max() > 1000:
                self.heard[int(round(dominant_hz(block)))] += 1

    @staticmethod
    def register() -> None:
        from callctl.media.audio import AudioSink
        from callctl.media.registry import AUDIO_SINKS, Arg, Kind

        class Probe(HeardTone, AudioSink):
            pass

        AUDIO_SINKS.register(Kind("probe", "probe:USER", Arg.REQUIRED,
                                  lambda a, p: Probe(a or ""), lambda a, p: None))


def heard(counts: dict[int, int], hz: float) -> int:
    """Half seconds of ``hz`` (±5 Hz) in what a caller heard."""
    return sum(n for f, n in counts.items() if abs(f - hz) <= 5)


# ------------------------------------------------------------------ the month


@dataclass
class Attempt:
    """One call placed by a caller, and what became of it."""

    n: int
    caller: str
    length_s: float
    t_place: float
    call_id: str | None = None
    reason: str | None = None
    source: str | None = None
    duration_s: float = 0.0
    t_end: float | None = None
    #: first ts of each caller-side event of this call
    ev: dict[str, float] = field(default_factory=dict)
    setup_ms: float | None = None
    stuck: bool = False
    #: what the caller heard of the kiosk: {dominant Hz: half seconds} (``HeardTone``)
    heard: dict[int, int] = field(default_factory=dict)
    #: the kiosk's side of it (filled by ``analyse``)
    kiosk: dict[str, Any] | None = None

    @property
    def connected(self) -> bool:
        return "call.connected" in self.ev

    @property
    def t_resolved(self) -> float:
        """When the caller learned whether the kiosk rang: ringback, answer or the end."""
        seen = [self.ev[k] for k in ("call.ringback", "call.connecting", "call.connected", "call.ended")
                if k in self.ev]
        return min(seen) if seen else (self.t_end or self.t_place)


@dataclass
class Window:
    kind: str
    start: float
    end: float


class Caller:
    """One caller identity: online for a while (a Phone), then gone, then back."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.phone: Any = None
        self.attempt: Attempt | None = None
        self.sessions = 0
        self.leaving = False

    @property
    def ready(self) -> bool:
        return (self.phone is not None and not self.leaving and self.phone.online
                and self.attempt is None)

    def listener(self, event: str, record: dict[str, Any]) -> None:
        a = self.attempt
        if a is None:
            return
        cid = record.get("call_id")
        if cid is not None and a.call_id is not None and cid != a.call_id:
            return  # news of an earlier call of ours
        if event == "call.created" and cid:
            a.call_id = cid
        a.ev.setdefault(event, float(record["ts"]))
        if event == "call.connected" and a.setup_ms is None:
            a.setup_ms = record.get("setup_ms")


class Month:
    def __init__(self, args: argparse.Namespace, work: Path, cutter: Cutter, card: SoundCard | None,
                 card_skip: str | None) -> None:
        self.args = args
        self.work = work
        self.cutter = cutter
        #: the kiosk's sound card (None: it runs a tone, for ``card_skip``)
        self.card = card
        self.card_skip = card_skip
        #: checks of the calls after each replug, done while the month goes on
        self.checks: list[asyncio.Task[None]] = []
        self.rng = random.Random(args.seed)
        self.spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spawner")
        self.server: ServerProcess | None = None
        self.kiosk: Child | None = None
        self.klog = KioskLog()
        self.run_dir = work / "run"
        self.callers = [Caller(n) for n in CALLER_NAMES[: args.callers]]
        self.attempts: list[Attempt] = []
        self.inflight: set[asyncio.Task[None]] = set()
        self.windows: list[Window] = []
        self.restarts: list[dict[str, Any]] = []
        self.cuts: list[dict[str, Any]] = []
        self.unplugs: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.skipped_no_caller = 0
        self.calm = asyncio.Lock()  # a disruption and a sample do not overlap
        self.paused = asyncio.Event()
        self.paused.set()  # set: arrivals go on
        self.t0 = 0.0
        self.t_stop = 0.0
        self.ending = False
        self.kiosk_exit: int | None = None
        self.kiosk_died_at: float | None = None
        self.notes: list[str] = []
        #: (t s, calls, kiosk rang, RSS MiB, fds, threads) every 10 s, in calls or not
        self.rss_series: list[tuple[float, int, int, float, int, int]] = []

    # ---------------------------------------------------------------- processes
    async def in_spawner(self, fn: Any, *a: Any) -> Any:
        """Run ``fn`` in the thread that owns the server process (its PDEATHSIG is tied to that thread)."""
        return await asyncio.get_running_loop().run_in_executor(self.spawner, fn, *a)

    def server_args(self) -> list[str]:
        extra = ["--log-level", "info", "--calls-per-minute", "100000"]
        if self.cutter.method == "netns":
            extra += ["--host", netns.PUBLIC]
        if self.args.heartbeat is not None:
            extra += ["--heartbeat", str(self.args.heartbeat)]
        return extra

    async def start_kiosk(self) -> None:
        assert self.server is not None
        self.run_dir.mkdir(mode=0o700)
        audio = self.card.kiosk_args() if self.card else ["--audio-in", "tone", "--audio-out", "null"]
        argv = [*self.cutter.kiosk_prefix(),
                *callctl_command("--json", "--server", self.server.url, "--as", KIOSK_USER, "listen",
                                 "--auto-accept", "--device", KIOSK_DEVICE, *audio, "--video-out", "null")]
        env = callctl_env(XDG_RUNTIME_DIR=str(self.run_dir), XDG_CONFIG_HOME=str(self.work / "config"),
                          XDG_STATE_HOME=str(self.work / "state"),
                          CALLCTL_SECRET_FILE=str(self.server.secret_file),
                          **({"HOME": str(self.card.home)} if self.card else {}))  # its ~/.asoundrc
        self.kiosk = Child(argv, name="kiosk", env=env, stderr=self.work / "kiosk.log",
                           on_event=self.klog.hook)
        await self.kiosk.await_event("registered", timeout=60)

    def client(self, user: str) -> Any:
        from callctl.signaling.client import SignalingClient

        assert self.server is not None
        ttl = self.args.minutes * 60 + 3600
        return SignalingClient(self.server.url, self.server.token(user, ttl=ttl), device="desk")

    # ---------------------------------------------------------------- callers
    async def caller_life(self, caller: Caller, first: bool) -> None:
        from callctl.engine.phone import Phone
        from callctl.media.assembly import MediaOptions

        a = self.args
        if not first or self.rng.random() < 0.3:  # some start offline
            await asyncio.sleep(self.rng.uniform(0, a.offline_max))
        while not self.ending:
            phone = Phone(client=self.client(caller.user), device="desk",
                          media=MediaOptions(audio_in=f"tone:{CALLER_HZ:g}", audio_out=f"probe:{caller.user}",
                                             video_out="null"))
            phone.listeners.append(caller.listener)
            phone.start()
            caller.phone, caller.leaving = phone, False
            caller.sessions += 1
            try:
                await until(lambda p=phone: self.ending or p.registered.is_set(), 30)
                stay = self.rng.uniform(a.online_min, a.online_max)
                await until(lambda: self.ending, stay, step=0.25)
                caller.leaving = True  # no new calls; the one going on ends first
                await until(lambda: caller.attempt is None, 120, step=0.1)
            finally:
                caller.phone, caller.leaving = None, True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(phone.close(), 15)
            if self.ending:
                return
            await asyncio.sleep(self.rng.uniform(a.offline_min, a.offline_max))

    def length(self) -> float:
        a = self.args
        if self.rng.random() < a.short_share:
            return round(self.rng.uniform(a.length_min, a.short_max), 2)
        return round(self.rng.uniform(a.short_max, a.length_max), 2)

    async def place(self, caller: Caller, attempt: Attempt) -> None:
        from callctl.engine import machine as m
        from callctl.engine.session import CallLimits
        from callctl.signaling.protocol import Media

        phone = caller.phone
        HeardTone.open_now[caller.user] = []  # the probes this call opens
        try:
            session = phone.dial(KIOSK_USER, Media.AUDIO, CallLimits(ring_timeout=self.args.ring_timeout,
                                                                     hangup_after=attempt.length_s))
            limit = self.args.ring_timeout + attempt.length_s + 60
            try:
                await asyncio.wait_for(asyncio.shield(session.ended.wait()), limit)
            except TimeoutError:
                attempt.stuck = True
                bench.log(f"call {attempt.n} ({caller.user}) has not ended after {limit:.0f} s: hanging up")
                session.feed(m.Hangup())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.ended.wait(), 15)
            if session.ended.is_set():
                out = session.outcome()
                attempt.reason, attempt.source = out.reason.value, out.source.value
                attempt.duration_s = out.duration_s
                attempt.call_id = attempt.call_id or out.call_id
            else:
                attempt.reason = "stuck"
        except Exception as exc:  # a bug in the caller's side: record it, go on
            attempt.reason = f"exception:{type(exc).__name__}"
            logging.getLogger("soak").exception("call %d", attempt.n)
        finally:
            attempt.t_end = now()
            for probe in HeardTone.open_now.pop(caller.user, []):
                for hz, n in probe.heard.items():
                    attempt.heard[hz] = attempt.heard.get(hz, 0) + n
            caller.attempt = None

    async def arrivals(self) -> None:
        a = self.args
        while now() < self.t_stop:
            await asyncio.sleep(self.rng.expovariate(a.rate))
            await self.paused.wait()
            if now() >= self.t_stop:
                break
            ready = [c for c in self.callers if c.ready]
            if not ready:
                self.skipped_no_caller += 1
                continue
            caller = self.rng.choice(ready)
            attempt = Attempt(len(self.attempts) + 1, caller.user, self.length(), now())
            self.attempts.append(attempt)
            caller.attempt = attempt
            task = asyncio.ensure_future(self.place(caller, attempt))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            if attempt.n % a.every == 0:
                await self.sample(f"{attempt.n} calls")

    # ---------------------------------------------------------------- sampling
    def status(self) -> dict[str, Any]:
        path = next((self.run_dir / "callctl").glob("*.sock"))
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b'{"cmd": "status"}\n')
            return json.loads(s.makefile().readline())  # type: ignore[no-any-return]

    async def sample(self, label: str) -> None:
        """Hold new calls, wait until the kiosk is idle and online, then read it."""
        self.paused.clear()
        try:
            async with self.calm:
                settled = await until(lambda: not self.inflight, 120)
                settled &= await until(lambda: self.klog.idle() and self.klog.online, 60)
                await asyncio.sleep(0.5)  # the ended call's sockets and threads close
                pid = self.kiosk.pid if self.kiosk else 0
                # the server closes idle keep-alive connections after 5 s (uvicorn's default); the
                # kiosk's HTTP pool keeps them, half-closed (CLOSE_WAIT), until its next request: wait
                # until only the event stream is established, and count those apart
                quiet = time.monotonic()
                await until(lambda: fd_kinds(pid).get("tcp", 0) <= 1, 7, step=0.25)
                quiet = time.monotonic() - quiet
                # /proc first: the status request's own connection is an fd of the kiosk's for a moment
                row = {
                    "label": label, "attempts": len(self.attempts), "kiosk_calls": self.klog.incoming,
                    "t_s": round(now() - self.t0, 1),
                    "rss_mib": round(procfs.memory_kib(pid).get("VmRSS", 0) / 1024, 1),
                    "fds": procfs.open_fds(pid), "fd_kinds": fd_kinds(pid), "threads": procfs.threads(pid),
                }
                try:
                    st = await asyncio.wait_for(asyncio.to_thread(self.status), 10)
                except Exception as exc:
                    st = {"error": f"{type(exc).__name__}: {exc}"}
                row.update(tasks=st.get("tasks"), settled=settled, quiet_wait_s=round(quiet, 1))
                row["fds_live"] = row["fds"] - row["fd_kinds"].get("tcp_close_wait", 0)
                for key in ("uptime_s", "calls_taken", "calls_missed", "server_link"):
                    if key in st:
                        row[key] = st[key]
                self.samples.append(row)
                print(f"{row['t_s']:7.1f} s  {row['attempts']:5d} calls  kiosk rang {row['kiosk_calls']:4d}  "
                      f"rss {row['rss_mib']:6.1f} MiB  fds {row['fds']:3d} ({row['fds_live']} not half-closed)  "
                      f"threads {row['threads']:3d}  "
                      f"tasks {row['tasks']}  fds: {row['fd_kinds']}" + ("" if settled else "  (not settled)"),
                      flush=True)
        finally:
            self.paused.set()

    # ---------------------------------------------------------------- disruptions
    def schedule(self) -> list[tuple[float, str]]:
        a, dur = self.args, self.args.minutes * 60
        plan: list[tuple[float, str]] = []
        for period, kind in ((a.server_every, "server"), (a.cut_every, "cut"), (a.unplug_every, "unplug")):
            if period and period > 0:
                k = 1
                while k * period < dur - a.tail:
                    plan.append((k * period, kind))
                    k += 1
        return sorted(plan)

    async def disruptions(self) -> None:
        actions = {"server": self.restart_server, "cut": self.cut_network, "unplug": self.unplug_device}
        for at, kind in self.schedule():
            wait = self.t0 + at - now()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.ending or now() >= self.t_stop:
                return
            async with self.calm:
                try:
                    await actions[kind]()
                except Exception as exc:
                    self.notes.append(f"{kind} at {at:.0f} s failed: {type(exc).__name__}: {exc}")
                    bench.log(self.notes[-1])
                    if kind == "server":
                        raise  # no server: the soak cannot go on

    async def restart_server(self) -> None:
        assert self.server is not None
        t_kill = now()
        kiosk_in_call = self.klog.call
        await self.in_spawner(self.server.stop, signal.SIGKILL)
        if self.args.server_down > 0:
            await asyncio.sleep(self.args.server_down)
        await self.in_spawner(self.server.start)
        listening = self.server.proc.find("server.listening") if self.server.proc else None
        t_up = float(listening["ts"]) if listening else now()
        back = await until(lambda: bool(self.klog.named("server.restored", since=t_kill)), 60)
        restored = self.klog.named("server.restored", since=t_kill)
        lost = self.klog.named("server.lost", since=t_kill)
        t_restored = float(restored[0]["ts"]) if restored else None
        callers_back = await until(lambda: all(c.phone is None or c.phone.online for c in self.callers), 30)
        end = now()
        self.windows.append(Window("server", t_kill, end + 1.0))
        row = {"t_s": round(t_kill - self.t0, 1), "down_s": round(t_up - t_kill, 2),
               "kiosk_lost_after_s": round(float(lost[0]["ts"]) - t_kill, 2) if lost else None,
               "reregister_s": round(t_restored - t_up, 2) if t_restored else None,
               "kiosk_in_call": kiosk_in_call is not None, "callers_back": callers_back, "restored": back}
        self.restarts.append(row)
        bench.log(f"server restarted at {row['t_s']} s: up after {row['down_s']} s, kiosk registered "
                  f"{row['reregister_s']} s after that" + (" (kiosk was in a call)" if kiosk_in_call else ""))

    async def cut_network(self) -> None:
        if self.cutter.method == "none":
            self.cuts.append({"t_s": round(now() - self.t0, 1), "result": "skipped: no way to cut here"})
            return
        t_cut = now()
        await asyncio.to_thread(self.cutter.cut)
        in_call = self.klog.call  # once the cable is out (a hangup on its way may just have made it)
        await asyncio.sleep(self.args.cut_for)
        await asyncio.to_thread(self.cutter.restore)
        t_up = now()
        lost = self.klog.named("server.lost", since=t_cut)
        t_restored = None
        if lost:
            await until(lambda: bool(self.klog.named("server.restored", since=t_cut)), 60)
            restored = self.klog.named("server.restored", since=t_cut)
            t_restored = float(restored[0]["ts"]) if restored else None
        await asyncio.sleep(self.args.cut_settle)
        self.windows.append(Window("cut", t_cut, max(now(), t_restored or 0) + 0.5))
        rec = self.klog.named("call.reconnected", since=t_cut)
        row = {"t_s": round(t_cut - self.t0, 1), "for_s": round(t_up - t_cut, 1), "method": self.cutter.method,
               "kiosk_in_call": in_call is not None,
               "kiosk_noticed": bool(lost),
               "lost_after_s": round(float(lost[0]["ts"]) - t_cut, 2) if lost else None,
               "reregister_s": round(t_restored - t_up, 2) if t_restored else None,
               "reconnecting": len(self.klog.named("call.reconnecting", since=t_cut)),
               "reconnected_after_s": round(float(rec[0]["ts"]) - t_up, 2) if rec else None}
        self.cuts.append(row)
        bench.log(f"network cut at {row['t_s']} s for {row['for_s']} s ({self.cutter.method}): "
                  f"kiosk {'in a call' if in_call else 'idle'}, noticed {row['kiosk_noticed']}, "
                  f"registered again {row['reregister_s']} s after the cable came back")

    async def unplug_device(self) -> None:
        """The kiosk's sound card pulled out (in a call when there is one), then plugged back as another.

        The kiosk must notice (``device.lost``), keep taking calls without it,
        and take the card back under its new names and indexes
        (``device.restored`` in a call that goes on; the next call opens it by
        name): ``check_replug`` then listens to the next call through it.
        """
        card = self.card
        if card is None:
            row: dict[str, Any] = {"t_s": round(now() - self.t0, 1), "result": f"skipped: {self.card_skip}"}
            self.unplugs.append(row)
            bench.log(f"device unplug at {row['t_s']} s: {row['result']}")
            return
        # a cable is pulled mid-call, the hard case (the streams running): wait for a call a moment
        await until(lambda: self.klog.connected is not None, self.args.unplug_wait)
        in_call = self.klog.connected
        was = card.names()
        was_index = [card.index(n) for n in was]
        was_hz = card.mic_hz
        t_unplug = now()
        await asyncio.to_thread(card.unplug)
        if in_call is not None:  # the streams stop at their next write; the watchdog sees it in 1.5 s
            await until(lambda: self.klog.connected != in_call or {
                e.get("kind") for e in self.klog.named("device.lost", since=t_unplug)
                if e.get("call_id") == in_call} >= {"mic", "speaker"}, 6)
        await asyncio.sleep(max(0.0, t_unplug + self.args.unplug_for - now()))
        t_replug = now()
        await asyncio.to_thread(card.replug)
        now_names = card.names()
        row = {"t_s": round(t_unplug - self.t0, 1), "for_s": round(t_replug - t_unplug, 1),
               "kiosk_in_call": in_call is not None, "generation": card.generation,
               "was": {"mic": [was[0], was_index[0]], "speaker": [was[1], was_index[1]], "mic_hz": was_hz},
               "now": {"mic": [now_names[0], card.index(now_names[0])],
                       "speaker": [now_names[1], card.index(now_names[1])], "mic_hz": card.mic_hz},
               "result": "checking"}
        self.unplugs.append(row)
        bench.log(f"sound card unplugged at {row['t_s']} s for {row['for_s']} s (kiosk "
                  f"{'in a call' if in_call else 'idle'}); back as {now_names[0]} (index "
                  f"{row['now']['mic'][1]}, was {was_index[0]}) and {now_names[1]} (index "
                  f"{row['now']['speaker'][1]}, was {was_index[1]})")
        self.checks.append(asyncio.ensure_future(self.check_replug(row, t_unplug, t_replug, in_call)))

    async def check_replug(self, row: dict[str, Any], t_unplug: float, t_replug: float,
                           in_call: str | None) -> None:
        """What the kiosk said about the unplug, and whether the next call carried audio through the card."""
        card = self.card
        assert card is not None
        generation, mic_hz = card.generation, card.mic_hz

        def current() -> bool:
            return card.generation == generation and card.plugged

        # the speaker: the callers' tone reaches the new card's speaker (within a call, or the next one)
        speaker_after = None
        deadline = t_replug + 45
        while now() < deadline and current():
            if abs(card.speaker_hz() - CALLER_HZ) < 5:
                speaker_after = round(now() - t_replug, 2)
                break
            await asyncio.sleep(0.2)
        # the microphone: the next call of 2 s or more placed after the replug; did its caller hear it?
        mic_call: Attempt | None = None
        deadline = t_replug + 120
        i = 0
        while mic_call is None and now() < deadline and not self.ending:
            after = [x for x in self.attempts if x.t_place > t_replug]
            if i < len(after):
                x = after[i]
                if x.t_end is None:
                    await asyncio.sleep(0.2)
                    continue
                if x.connected and x.duration_s >= 2.0:
                    mic_call = x
                i += 1
                continue
            await asyncio.sleep(0.2)
        # what the kiosk said: lost while unplugged, restored after (in the calls still going on)
        calls: dict[str, tuple[float, float]] = {}
        for cid, t in ((e.get("call_id"), float(e["ts"])) for e in self.klog.named("call.incoming")):
            if cid:
                calls[cid] = (t, math.inf)
        for e in self.klog.named("call.ended"):
            if e.get("call_id") in calls:
                calls[e["call_id"]] = (calls[e["call_id"]][0], float(e["ts"]))
        lost = [e for e in self.klog.named("device.lost", since=t_unplug) if float(e["ts"]) <= t_replug + 1]
        restored = [e for e in self.klog.named("device.restored", since=t_replug)
                    if float(e["ts"]) <= t_replug + 15]
        lost_at = {k: round(min(float(e["ts"]) for e in lost if e.get("kind") == k) - t_unplug, 2)
                   for k in ("mic", "speaker") if any(e.get("kind") == k for e in lost)}
        restored_at = {k: [e.get("device"), round(float(e["ts"]) - t_replug, 2)]
                       for k in ("mic", "speaker") for e in restored[::-1] if e.get("kind") == k}
        # a call going on for 2 s of the unplug must have lost both; one still going 3 s after the
        # replug (a reopen every 2 s) must have both back, under the new names
        must_lose = any(s <= t_replug and e >= t_unplug + 2.0 for s, e in calls.values())
        going_on = {cid for cid, (s, e) in calls.items() if s <= t_replug and e > t_replug + 3.0}
        must_restore = {e.get("kind") for e in lost if e.get("call_id") in going_on}
        during = [cid for cid, (s, _) in calls.items() if t_unplug <= s <= t_replug]
        ends = collections.Counter(str(e.get("reason")) for e in self.klog.named("call.ended", since=t_unplug)
                                   if e.get("call_id") in during)
        row.update(lost_after_s=lost_at, lost_in_call=in_call is not None and {
                       e.get("kind") for e in lost if e.get("call_id") == in_call} >= {"mic", "speaker"},
                   restored=restored_at, kiosk_calls_unplugged=len(during), their_ends=dict(ends),
                   speaker_after_s=speaker_after,
                   mic_call=None if mic_call is None else {
                       "n": mic_call.n, "t_s": round(mic_call.t_place - self.t0, 1),
                       "talk_s": mic_call.duration_s, "heard": mic_call.heard,
                       "heard_mic_s": heard(mic_call.heard, mic_hz) / 2})
        misses = []
        if must_lose and set(lost_at) != {"mic", "speaker"}:
            misses.append(f"lost only {sorted(lost_at)}")
        names = dict(zip(("mic", "speaker"), card.names(generation), strict=True))
        for kind in sorted(k for k in must_restore if k):
            if restored_at.get(kind, [None])[0] != names[kind]:
                misses.append(f"{kind} not restored as {names[kind]}")
        if not current() and (speaker_after is None or mic_call is None):
            row["result"] = "not checked: unplugged again first"
            return
        if speaker_after is None:
            misses.append(f"no {CALLER_HZ:g} Hz on {names['speaker']}")
        if mic_call is None:
            misses.append("no call of 2 s or more after the replug")
        elif heard(mic_call.heard, mic_hz) == 0:
            misses.append(f"call {mic_call.n}'s caller did not hear {names['mic']} ({mic_hz:g} Hz): "
                          f"heard {mic_call.heard}")
        row["result"] = "ok" if not misses else "MISS: " + "; ".join(misses)
        row["ok"] = not misses
        bench.log(f"sound card back at {round(t_replug - self.t0, 1)} s: {row['result']}")

    # ---------------------------------------------------------------- the run
    async def run(self) -> None:
        from callctl.media.adjust import preload

        preload()
        HeardTone.register()
        a = self.args
        self.server = ServerProcess(self.work / "server", self.server_args())
        self.server.workdir.mkdir()
        await self.in_spawner(self.server.start)
        bench.log(f"server at {self.server.url} (pid {self.server.pid}); network cuts: {self.cutter.method}")
        await self.start_kiosk()
        assert self.kiosk is not None
        bench.log(f"kiosk registered (pid {self.kiosk.pid}); {a.minutes:g} minutes of calls from "
                  f"{len(self.callers)} callers at {a.rate:g}/s; its sound: "
                  + (f"{' and '.join(self.card.names())} (ALSA plugin PCMs, indexes "
                     f"{[self.card.index(n) for n in self.card.names()]})" if self.card
                     else f"a tone ({self.card_skip})"))
        self.t0 = now()
        self.t_stop = self.t0 + a.minutes * 60
        lives = [asyncio.ensure_future(self.caller_life(c, True)) for c in self.callers]
        disrupt = asyncio.ensure_future(self.disruptions())
        arrive = asyncio.ensure_future(self.arrivals())
        watch = asyncio.ensure_future(self.watch_kiosk())
        try:
            await self.sample("start")
            pending = {arrive, disrupt, watch}
            while arrive in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            bench.log(f"{len(self.attempts)} calls placed; waiting for the last ones to end")
            await until(lambda: not self.inflight, a.ring_timeout + a.length_max + 60)
            await until(lambda: self.klog.idle(), 30)
            if self.checks:  # a replug near the end: its next call may not have come
                await asyncio.wait(self.checks, timeout=10)
            if not self.samples or self.samples[-1]["attempts"] != len(self.attempts):
                await self.sample("end")
            try:
                self.status_end = await asyncio.wait_for(asyncio.to_thread(self.status), 10)
            except Exception as exc:
                self.notes.append(f"no status from the kiosk at the end: {type(exc).__name__}: {exc}")
        finally:
            self.ending = True
            for t in (arrive, disrupt, watch, *self.checks):
                t.cancel()
            await asyncio.gather(*lives, return_exceptions=True)
            for t in list(self.inflight):
                t.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)

    async def watch_kiosk(self) -> None:
        next_rss = 0.0
        while True:
            await asyncio.sleep(0.5)
            if self.kiosk is not None and time.monotonic() >= next_rss:
                next_rss = time.monotonic() + 10
                self.rss_series.append((round(now() - self.t0, 1), len(self.attempts), self.klog.incoming,
                                        round(procfs.memory_kib(self.kiosk.pid).get("VmRSS", 0) / 1024, 1),
                                        procfs.open_fds(self.kiosk.pid), procfs.threads(self.kiosk.pid)))
            if self.kiosk is not None and self.kiosk.returncode is not None:
                self.kiosk_died_at = now()
                raise bench.BenchError(f"the kiosk exited ({self.kiosk.returncode}) at "
                                       f"{now() - self.t0:.0f} s; stderr: {self.kiosk.stderr[-1000:]!r}")

    def stop_processes(self) -> None:
        """Synchronous: the kiosk (SIGTERM: a service stop must exit 0), the server, the spawner thread."""
        if self.kiosk is not None:
            if self.kiosk.returncode is not None and self.kiosk_died_at is None:
                self.kiosk_died_at = now()
            if self.kiosk.returncode is None:
                self.kiosk_exit = self.kiosk.stop(signal.SIGTERM, grace=10)
            else:
                self.kiosk.stop(grace=0)
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.spawner.submit(self.server.stop).result(20)
        self.spawner.shutdown(wait=True)


# ------------------------------------------------------------------ the report


def overlaps(a0: float, a1: float, windows: list[Window]) -> str | None:
    for w in windows:
        if a0 <= w.end and a1 >= w.start:
            return w.kind
    return None


def analyse(month: Month) -> dict[str, Any]:
    a = month.args
    events = month.klog.events
    # the kiosk's registered intervals and busy (ringing or in a call) intervals, from its own events
    online: list[tuple[float, bool]] = []
    incoming: dict[str, float] = {}
    ended: dict[str, dict[str, Any]] = {}
    missed_ev: dict[str, str] = {}
    missed_at: dict[str, float] = {}
    for e in events:
        name, ts, cid = e["event"], float(e["ts"]), e.get("call_id")
        if name in ("registered", "server.restored"):
            online.append((ts, True))
        elif name == "server.lost":
            online.append((ts, False))
        elif name == "call.incoming" and cid:
            incoming.setdefault(cid, ts)
        elif name == "call.ended" and cid:
            ended.setdefault(cid, e)
        elif name == "call.missed" and cid:
            missed_ev[cid] = str(e.get("reason"))
            missed_at.setdefault(cid, ts)
    # a call that rang the kiosk kept it busy from its ring (or, sooner, from when its caller placed it:
    # the kiosk takes rings in the order they came, but reports call.incoming a moment later, so a
    # call placed just after it may be turned away busy before that call.incoming shows)
    placed_at = {x.call_id: x.t_place for x in month.attempts if x.call_id}
    busy = [(cid, t, min(t, placed_at.get(cid, t)), float(ended[cid]["ts"]) if cid in ended else math.inf)
            for cid, t in incoming.items()]

    def registered_at(t: float) -> bool:
        state = False
        for ts, up in online:
            if ts > t:
                break
            state = up
        return state

    def in_call_at(t: float, own: str | None) -> bool:
        return any(cid != own and s <= t <= e for cid, s, _, e in busy)

    def idle_over(t0: float, t1: float, own: str | None) -> bool:
        return not any(cid != own and s <= t1 and e >= t0 for cid, _, s, e in busy)

    out: dict[str, Any] = {}
    atts = month.attempts
    reasons = collections.Counter(x.reason for x in atts)
    connected = [x for x in atts if x.connected]
    busy_calls = [x for x in atts if x.reason == "busy" and not x.connected]
    busy_ids = {id(x) for x in busy_calls}
    failed = [x for x in atts if id(x) not in busy_ids and x.reason != "hangup"]
    calm_failed: list[Attempt] = []
    disrupted_failed: list[Attempt] = []
    for x in failed:
        (disrupted_failed if overlaps(x.t_place, x.t_end or now(), month.windows) else calm_failed).append(x)
    eligible, missed, raced, disrupted_placed = [], [], [], []
    in_call, offline = [], []
    for x in atts:
        if x.call_id is None:
            continue
        # until the kiosk decided about this call (rang, or turned it away), else until the caller knew
        decided = min([t for t in (incoming.get(x.call_id), missed_at.get(x.call_id)) if t is not None],
                      default=max(x.t_resolved, x.t_end or x.t_resolved))
        if overlaps(x.t_place, decided, month.windows):
            disrupted_placed.append(x)
            continue
        if not registered_at(x.t_place):
            offline.append(x)
            continue
        if in_call_at(x.t_place, x.call_id):
            in_call.append(x)
            continue
        if not idle_over(x.t_place, decided, x.call_id):
            raced.append(x)
            continue
        eligible.append(x)
        if x.call_id not in incoming:
            missed.append(x)
    for x in atts:
        if x.call_id is not None:
            end = ended.get(x.call_id)
            x.kiosk = {"incoming": incoming.get(x.call_id), "missed": missed_ev.get(x.call_id),
                       "ended": end.get("reason") if end else None,
                       "ended_ts": float(end["ts"]) if end else None}
    out["calls"] = {
        "attempted": len(atts), "connected": len(connected), "hung_up_ok": reasons.get("hangup", 0),
        "busy": len(busy_calls), "failed": len(failed),
        "failed_by_reason": dict(collections.Counter(x.reason for x in failed)),
        "failed_calm": dict(collections.Counter(x.reason for x in calm_failed)),
        "failed_in_disruption": dict(collections.Counter(x.reason for x in disrupted_failed)),
        "failed_calm_list": [short(x, month.t0) for x in calm_failed[:20]],
        "busy_heard_by_kiosk": sum(1 for x in busy_calls if x.call_id in missed_ev),
        "no_caller_online": month.skipped_no_caller,
        "setup_ms": stats.summary([x.setup_ms for x in connected
                                   if not overlaps(x.t_place, x.t_resolved, month.windows)], (50, 95), 1),
        "setup_ms_in_disruption": stats.summary([x.setup_ms for x in connected
                                                 if overlaps(x.t_place, x.t_resolved, month.windows)],
                                                (50, 95), 1),
        "talk_s": stats.summary([x.duration_s for x in connected], (50, 95), 1),
        "length_asked_s": stats.summary([x.length_s for x in atts], (50, 95), 1),
    }
    out["rings"] = {
        "eligible": len(eligible), "rang": len(eligible) - len(missed), "missed": len(missed),
        "missed_list": [{**short(x, month.t0), "kiosk_heard": missed_ev.get(x.call_id or "")} for x in missed[:20]],
        "kiosk_in_call": len(in_call),
        "kiosk_in_call_rang": sum(1 for x in in_call if x.call_id in incoming),
        "raced": len(raced),
        "kiosk_offline": len(offline),
        "placed_in_disruption": len(disrupted_placed),
        "placed_in_disruption_rang": sum(1 for x in disrupted_placed if x.call_id in incoming),
        "placed_in_disruption_connected": sum(1 for x in disrupted_placed if x.connected),
    }
    k_reasons: collections.Counter[str] = collections.Counter()
    k_calm: collections.Counter[str] = collections.Counter()
    for cid, e in ended.items():
        r = str(e.get("reason"))
        k_reasons[r] += 1
        if r != "hangup" and not overlaps(incoming.get(cid, float(e["ts"])), float(e["ts"]), month.windows):
            k_calm[r] += 1
    names = collections.Counter(e["event"] for e in events)
    out["kiosk"] = {
        "rang": len(incoming), "ended_by_reason": dict(k_reasons), "ended_not_hangup_calm": dict(k_calm),
        "events": dict(names),
        "errors": [e.get("message") for e in events if e["event"] == "error"][:20],
        "warnings": [e.get("message") for e in events if e["event"] == "warning"][:20],
    }
    # RSS and fds after the warm-up
    rows = [r for r in month.samples if r["label"] != "start"]
    base = next((r for r in rows if r["kiosk_calls"] >= a.warm_up), None)
    last = rows[-1] if rows else None
    growth: dict[str, Any] = {"base": base, "last": last}
    if base is not None and last is not None and last is not base:
        growth.update(rss_mib=round(last["rss_mib"] - base["rss_mib"], 1), fds=last["fds"] - base["fds"],
                      fds_live=last["fds_live"] - base["fds_live"],
                      threads=last["threads"] - base["threads"],
                      tasks=(last["tasks"] or 0) - (base["tasks"] or 0),
                      kiosk_calls=last["kiosk_calls"] - base["kiosk_calls"])
    out["growth"] = growth
    # what the callers heard: the kiosk's microphone (its tone then) in calls of 2 s or more
    long_calls = [x for x in connected if x.duration_s >= 2.0]
    tones = list(MIC_HZ) if month.card else [440.0]
    heard_kiosk = [x for x in long_calls if any(heard(x.heard, hz) for hz in tones)]
    unplugged = [x for x in long_calls if any(
        x.t_place <= month.t0 + u["t_s"] + u.get("for_s", 0) + 3 and (x.t_end or 0) >= month.t0 + u["t_s"]
        for u in month.unplugs if "for_s" in u)]
    out["heard"] = {"calls": len(long_calls), "heard_kiosk": len(heard_kiosk),
                    "over_an_unplug": len(unplugged),
                    "heard_kiosk_not_over_an_unplug": len({id(x) for x in heard_kiosk} - {id(x) for x in unplugged}),
                    "not_over_an_unplug": len(long_calls) - len(unplugged)}
    rereg = [r["reregister_s"] for r in month.restarts]
    out["reregister_s"] = stats.summary(rereg, (50,), 2)
    out["reregister_after_cut_s"] = stats.summary([c.get("reregister_s") for c in month.cuts], (50,), 2)
    return out


def short(x: Attempt, t0: float) -> dict[str, Any]:
    return {"n": x.n, "caller": x.caller, "call_id": x.call_id, "reason": x.reason, "source": x.source,
            "t_s": round(x.t_place - t0, 1), "length_s": x.length_s,
            "events": {k: round(v - x.t_place, 3) for k, v in sorted(x.ev.items(), key=lambda kv: kv[1])}}


def targets(month: Month, res: dict[str, Any]) -> list[dict[str, Any]]:
    a = month.args
    g = res["growth"]
    rr = res["reregister_s"]
    t: list[dict[str, Any]] = [
        {"target": "calls attempted", "value": res["calls"]["attempted"], "limit": f">= {a.min_calls}",
         "ok": res["calls"]["attempted"] >= a.min_calls},
        {"target": "missed rings (registered, idle, calm)", "value": res["rings"]["missed"], "limit": "0",
         "ok": res["rings"]["missed"] == 0 and res["rings"]["eligible"] > 0},
        {"target": "calls failed outside disruptions", "value": sum(res["calls"]["failed_calm"].values()),
         "limit": "0", "ok": not res["calls"]["failed_calm"]},
        {"target": f"kiosk RSS growth after {a.warm_up} kiosk calls, MiB",
         "value": g.get("rss_mib", "n/a (too few calls)"), "limit": f"< {a.max_rss_growth:g}",
         "ok": None if g.get("rss_mib") is None else g["rss_mib"] < a.max_rss_growth},
        {"target": f"kiosk fd growth after {a.warm_up} kiosk calls (not counting half-closed TCP)",
         "value": (f"{g['fds_live']} (all fds: {g['fds']:+d})" if "fds" in g else "n/a (too few calls)"),
         "limit": "0", "ok": None if g.get("fds_live") is None else g["fds_live"] <= 0},
        {"target": "re-register after server restart p50 / max, s",
         "value": f"{rr['p50']} / {rr['max']}" if rr["n"] else "n/a", "limit": f"<= {a.max_reregister:g}",
         "ok": (rr["n"] > 0 and len(month.restarts) == rr["n"] and rr["max"] <= a.max_reregister)
         or (not month.restarts and not a.server_every)},
        {"target": "kiosk alive to the end, exit 0 on SIGTERM", "value": month.kiosk_exit, "limit": "0",
         "ok": month.kiosk_died_at is None and month.kiosk_exit == 0},
    ]
    done = [u for u in month.unplugs if "for_s" in u and not str(u["result"]).startswith("not checked")]
    if month.card is not None and a.unplug_every:
        t.append({"target": "sound card unplugs: lost, back under new names, next call carries audio both ways",
                  "value": f"{sum(1 for u in done if u.get('ok'))} of {len(done)}", "limit": "all",
                  "ok": bool(done) and all(u.get("ok") for u in done)})
    return t


def tracebacks(path: Path) -> list[str]:
    """The last line of each traceback in a log (the exception), and how often."""
    if not path.exists():
        return []
    found: collections.Counter[str] = collections.Counter()
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            found[(lines[j] if j < len(lines) else "?")[:200]] += 1
    return [f"{n}x {msg}" for msg, n in found.most_common(10)]


def report(month: Month, res: dict[str, Any], tgts: list[dict[str, Any]]) -> None:
    c, r, k = res["calls"], res["rings"], res["kiosk"]
    p = lambda s="": print(s, flush=True)  # noqa: E731
    p()
    p(f"== kiosk soak: {month.args.minutes:g} min, network cuts by {month.cutter.method} ==")
    if res.get("error"):
        p(f"the run stopped early: {res['error']}")
    p()
    p("| calls | n |")
    p("|---|---:|")
    p(f"| attempted | {c['attempted']} |")
    p(f"| connected | {c['connected']} (ended by hangup: {c['hung_up_ok']}) |")
    p(f"| busy (kiosk in another call) | {c['busy']} (kiosk reported {c['busy_heard_by_kiosk']} as call.missed) |")
    p(f"| failed | {c['failed']} {fmt(c['failed_by_reason'])} |")
    p(f"| — outside disruptions | {sum(c['failed_calm'].values())} {fmt(c['failed_calm'])} |")
    p(f"| — during a disruption | {sum(c['failed_in_disruption'].values())} {fmt(c['failed_in_disruption'])} |")
    p(f"| not placed (no caller online) | {c['no_caller_online']} |")
    p()
    sm = c["setup_ms"]
    p(f"dial → connected (caller): p50 {sm['p50']} ms, p95 {sm['p95']} ms, max {sm['max']} ms; "
      f"talk p50 {c['talk_s']['p50']} s, max {c['talk_s']['max']} s")
    p(f"rings: {r['eligible']} calls placed while the kiosk was registered, idle and nothing was disrupted: "
      f"{r['rang']} rang, {r['missed']} missed; {r['kiosk_in_call']} placed while the kiosk was in a call "
      f"(busy), {r['raced']} lost a race to another caller's ring (busy), {r['kiosk_offline']} while it "
      f"was offline; "
      f"{r['placed_in_disruption']} placed during a disruption ({r['placed_in_disruption_rang']} rang, "
      f"{r['placed_in_disruption_connected']} connected)")
    p(f"kiosk: rang {k['rang']} times; its calls ended {fmt(k['ended_by_reason'])}; "
      f"not a hangup outside disruptions: {fmt(k['ended_not_hangup_calm']) or 'none'}")
    p()
    p("| t s | calls | kiosk rang | RSS MiB | fds | not half-closed | threads | tasks | fds by kind |")
    p("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in month.samples:
        kinds = " ".join(f"{k} {v}" for k, v in s["fd_kinds"].items())
        p(f"| {s['t_s']} | {s['attempts']} | {s['kiosk_calls']} | {s['rss_mib']} | {s['fds']} | {s['fds_live']} | "
          f"{s['threads']} | {s['tasks']} | {kinds} |" + ("" if s["settled"] else " (not settled)"))
    p()
    p("| server restart at s | server up after s | kiosk in call | kiosk re-registered after s |")
    p("|---:|---:|---|---:|")
    for s in month.restarts:
        p(f"| {s['t_s']} | {s['down_s']} | {'yes' if s['kiosk_in_call'] else 'no'} | {s['reregister_s']} |")
    p()
    p("| cable pulled at s | for s | kiosk in call | kiosk noticed | re-registered after s | call reconnected after s |")
    p("|---:|---:|---|---|---:|---:|")
    for s in month.cuts:
        if "result" in s:
            p(f"| {s['t_s']} | {s['result']} | | | | |")
        else:
            p(f"| {s['t_s']} | {s['for_s']} | {'yes' if s['kiosk_in_call'] else 'no'} | "
              f"{'yes' if s['kiosk_noticed'] else 'no'} | {s['reregister_s']} | {s['reconnected_after_s']} |")
    h = res["heard"]
    p(f"callers heard the kiosk's {'microphone' if month.card else 'tone'} in {h['heard_kiosk']} of "
      f"{h['calls']} calls of 2 s or more ({h['heard_kiosk_not_over_an_unplug']} of "
      f"{h['not_over_an_unplug']} not over an unplug)")
    p()
    p("| card unplugged at s | for s | kiosk in call | lost after s (mic / speaker) | back as (index was → now) "
      "| restored after s | kiosk calls while out (ended) | speaker: 440 Hz after s | next call ≥ 2 s: "
      "caller heard | |")
    p("|---:|---:|---|---|---|---|---|---:|---|---|")
    for s in month.unplugs:
        if "for_s" not in s:
            p(f"| {s['t_s']} | {s['result']} | | | | | | | | |")
            continue
        lost = s.get("lost_after_s", {})
        was, new = s["was"], s["now"]
        back = (f"{new['mic'][0]} ({was['mic'][1]} → {new['mic'][1]}), "
                f"{new['speaker'][0]} ({was['speaker'][1]} → {new['speaker'][1]})")
        rest = s.get("restored") or {}
        restored = " / ".join(f"{k} {v[1]}" for k, v in rest.items()) or "—"
        mc = s.get("mic_call")
        caller = (f"call {mc['n']}: {mc['heard_mic_s']:g} s of {new['mic_hz']:g} Hz in {mc['talk_s']} s"
                  if mc else "no call")
        p(f"| {s['t_s']} | {s['for_s']} | {'yes' if s['kiosk_in_call'] else 'no'} | "
          f"{lost.get('mic', '—')} / {lost.get('speaker', '—')} | {back} | {restored} | "
          f"{s.get('kiosk_calls_unplugged', 0)} {fmt(s.get('their_ends', {}))} | "
          f"{s.get('speaker_after_s') if s.get('speaker_after_s') is not None else '—'} | {caller} | "
          f"{s['result']} |")
    for n in month.notes:
        p(f"note: {n}")
    for name, lines in res["logs"].items():
        for line in lines:
            p(f"{name} traceback: {line}")
    p()
    p("| target | value | limit | |")
    p("|---|---|---|---|")
    for t in tgts:
        verdict = "N/A (not met: too few calls to judge)" if t["ok"] is None else "PASS" if t["ok"] else "MISS"
        p(f"| {t['target']} | {t['value']} | {t['limit']} | {verdict} |")


def fmt(counts: dict[str, int]) -> str:
    return ("(" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + ")"
            if counts else "")


# ------------------------------------------------------------------ main


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long calls are placed (default 30)")
    ap.add_argument("--rate", type=float, default=1.7, help="calls placed per second, on average (default 1.7)")
    ap.add_argument("--min-calls", type=int, default=None,
                    help="target: calls attempted (default 2000 per 30 minutes)")
    ap.add_argument("--callers", type=int, default=6, help=f"caller identities (default 6, at most {len(CALLER_NAMES)})")
    ap.add_argument("--online-min", type=float, default=60.0, help="a caller stays online at least (s)")
    ap.add_argument("--online-max", type=float, default=240.0, help="... and at most (s)")
    ap.add_argument("--offline-min", type=float, default=5.0, help="a caller is then away at least (s)")
    ap.add_argument("--offline-max", type=float, default=45.0, help="... and at most (s)")
    ap.add_argument("--length-min", type=float, default=1.0, help="shortest call, connected (s)")
    ap.add_argument("--length-max", type=float, default=20.0, help="longest call (s)")
    ap.add_argument("--short-max", type=float, default=3.0, help="a short call is at most this long (s)")
    ap.add_argument("--short-share", type=float, default=0.8, help="share of short calls (default 0.8)")
    ap.add_argument("--ring-timeout", type=float, default=15.0, help="a caller gives up ringing after (s)")
    ap.add_argument("--server-every", type=float, default=300.0, help="restart the server every (s; 0: never)")
    ap.add_argument("--server-down", type=float, default=0.0, help="keep it down this long before the start (s)")
    ap.add_argument("--cut-every", type=float, default=420.0, help="cut the kiosk's network every (s; 0: never)")
    ap.add_argument("--cut-for", type=float, default=10.0, help="for this long (s)")
    ap.add_argument("--cut-settle", type=float, default=10.0,
                    help="after the cable is back, calls still count as disrupted this long (s)")
    ap.add_argument("--cut", choices=["auto", "netns", "nft", "none"], default="auto",
                    help="how: a namespace's cable (netns), nftables on the kiosk's cgroup (nft)")
    ap.add_argument("--unplug-every", type=float, default=540.0,
                    help="unplug the kiosk's sound card every (s; 0: never)")
    ap.add_argument("--unplug-for", type=float, default=5.0, help="... for this long (s)")
    ap.add_argument("--unplug-wait", type=float, default=10.0,
                    help="an unplug waits this long at most for the kiosk to be in a call (s)")
    ap.add_argument("--devices", choices=["auto", "alsa", "tone"], default="auto",
                    help="the kiosk's microphone and speaker: ALSA plugin PCMs that can be unplugged "
                         "(alsa; needs PyAudio and root), --audio-in tone --audio-out null (tone; the "
                         "unplugs are skipped), alsa when it can (auto)")
    ap.add_argument("--scale-periods", action="store_true",
                    help="scale the three periods above by minutes/30 (a shorter month with as many "
                         "disruptions); the cut's length stays")
    ap.add_argument("--tail", type=float, default=20.0, help="no disruption in the last this many s")
    ap.add_argument("--heartbeat", type=float, default=None, help="the server's --heartbeat (default: its own)")
    ap.add_argument("--every", type=int, default=100, help="sample the kiosk every this many calls")
    ap.add_argument("--warm-up", type=int, default=100,
                    help="calls the kiosk takes before its growth counts (default 100)")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="target: RSS growth after warm-up (MiB)")
    ap.add_argument("--max-reregister", type=float, default=5.0, help="target: re-register time (s)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--json-out", type=Path, default=None,
                    help="the JSON summary (default: $TMPDIR/callctl-soak-kiosk-DATE.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("--timeout", type=float, default=None, help="hard limit (default: minutes + 10 min)")
    args = ap.parse_args()
    if args.scale_periods:
        f = args.minutes / 30
        args.server_every, args.cut_every, args.unplug_every = (
            round(args.server_every * f, 1), round(args.cut_every * f, 1), round(args.unplug_every * f, 1))
    if args.min_calls is None:
        args.min_calls = int(round(2000 * args.minutes / 30))
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if not 1 <= args.callers <= len(CALLER_NAMES):
        ap.error(f"--callers: 1..{len(CALLER_NAMES)}")
    if args.json_out is None:
        args.json_out = Path(tempfile.gettempdir()) / f"callctl-soak-kiosk-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return args


def main() -> int:
    args = parse()
    bench.stop_on_signals(args.timeout or args.minutes * 60 + 600)
    if not procfs.available():
        bench.log("cannot run: needs Linux /proc")
        return bench.CANNOT_RUN
    work = Path(tempfile.mkdtemp(prefix="callctl-soak-kiosk-"))
    logging.basicConfig(filename=work / "callers.log", level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("callctl").setLevel(logging.INFO)
    cutter: Cutter | None = None
    card: SoundCard | None = None
    month: Month | None = None
    code = bench.CANNOT_RUN
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    info = machine.describe(ROOT, ["aiortc", "aioice", "av"])
    error: str | None = None
    try:
        card_skip: str | None = "--devices tone"
        if args.devices != "tone":
            card = SoundCard(work, tone_s=max(60.0, args.length_max + args.ring_timeout + 30))
            card_skip = card.why_not()
            if card_skip is not None:
                if args.devices == "alsa":
                    raise bench.BenchError(f"--devices alsa: {card_skip}")
                bench.log(f"no sound card for the kiosk ({card_skip}): it runs a tone, unplugs skipped")
                card.close()
                card = None
        cutter = make_cutter(args.cut)
        if isinstance(cutter, NetnsCutter):
            cutter.enter_pub()  # the server and the callers: the public segment; the kiosk: its own host
        month = Month(args, work, cutter, card, card_skip)
        asyncio.run(month.run())
        code = bench.MET
    except KeyboardInterrupt:
        code, error = bench.INTERRUPTED, "interrupted"
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc)[:2000]}"
        bench.log(f"cannot go on: {error}")
        code = bench.CANNOT_RUN
    finally:
        bench.cleaning_up()
        if month is not None:
            with contextlib.suppress(Exception):
                month.stop_processes()
        if cutter is not None:
            with contextlib.suppress(Exception):
                cutter.close()
        if card is not None:
            with contextlib.suppress(Exception):
                card.close()
    try:
        if month is not None and month.t0:
            res = analyse(month)
            res["error"] = error
            res["logs"] = {name: tb for name, tb in (
                ("kiosk", tracebacks(work / "kiosk.log")), ("callers", tracebacks(work / "callers.log")),
                ("server", [t for p in (month.server.logs if month.server else []) for t in tracebacks(p)]))
                if tb}
            tgts = targets(month, res)
            report(month, res, tgts)
            summary = {"started": started, "args": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in vars(args).items()},
                       "machine": info, "cut_method": cutter.method if cutter else None, "error": error,
                       **res, "samples": month.samples, "server_restarts": month.restarts, "cuts": month.cuts,
                       "unplugs": month.unplugs, "notes": month.notes, "rss_series": month.rss_series,
                       "kiosk_status_end": getattr(month, "status_end", None), "kiosk_exit": month.kiosk_exit,
                       "targets": tgts, "attempts": [asdict(x) for x in month.attempts]}
            rel = lambda t: None if t is None else round(t - month.t0, 3)  # noqa: E731
            summary["attempts"] = [
                {**d, "t_place": rel(d["t_place"]), "t_end": rel(d["t_end"]),
                 "ev": {k: rel(v) for k, v in d["ev"].items()},
                 "kiosk": d["kiosk"] and {**d["kiosk"], "incoming": rel(d["kiosk"]["incoming"]),
                                          "ended_ts": rel(d["kiosk"]["ended_ts"])}}
                for d in summary["attempts"]]
            summary["kiosk_events"] = [{**e, "ts": rel(float(e["ts"]))} for e in month.klog.events]
            summary["windows"] = [{"kind": w.kind, "start": rel(w.start), "end": rel(w.end)}
                                  for w in month.windows]
            summary["t0"] = month.t0
            if error or res["logs"]:
                summary["logs_tail"] = {p.name: p.read_text(errors="replace")[-4000:]
                                        for p in [work / "kiosk.log", work / "callers.log",
                                                  *(month.server.logs[-2:] if month.server else [])]
                                        if p.exists()}
            args.json_out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
            bench.log(f"summary written to {args.json_out}")
            if code == bench.MET:
                code = bench.MET if all(t["ok"] for t in tgts) else bench.MISSED
    except Exception as exc:
        bench.log(f"no report: {type(exc).__name__}: {exc}")
        if code == bench.MET:
            code = bench.CANNOT_RUN
    bench.keep_or_remove(work, args.keep)
    return code


if __name__ == "__main__":
    sys.exit(main())
