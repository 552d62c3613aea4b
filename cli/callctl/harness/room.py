"""A simulated room between a speaker and a microphone, for testing echo cancellation.

The kiosk's speaker and microphone are ALSA ``file`` plugin PCMs whose files
are FIFOs (``asoundrc``): what callctl plays comes out of ``speaker.fifo``,
and what it captures is read from ``mic.fifo``.  This process sits between
them, on the wall clock, 10 ms at a time:

    mic = far * room impulse response (delay, gain, decay) + near speech + noise

It logs each part on the microphone's timeline (``far.raw``, ``echo.raw``,
``near.raw``, ``noise.raw``, ``mic.raw``: 48 kHz mono 16-bit), so a test can
measure exactly how much of the echo and of the near speech reached the far
end.  The near-end speech starts ``near_after_s`` after the far end is first
heard.

    python -m callctl.harness.room DIR [--delay-ms 60] [--gain 0.5] ...

It prints ``ready`` once both FIFOs are open (start callctl after that) and
runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

RATE = 48000
BLOCK = RATE // 100
#: The speaker's samples waiting for their turn: more than this and the oldest go (a clock slip).
FAR_QUEUE_MAX = RATE // 2
#: What the room keeps of the speaker's output before playing it (its writes' phase jitter).
FAR_RESERVE = RATE // 25
#: Far-end samples louder than this count as "the far end is heard" (starts the near-end clock).
HEARD = 300
#: The microphone FIFO's size (~170 ms: room for a reader that comes late), and how much the room
#: keeps waiting in it at most (~40 ms: what the microphone reads is never further behind the room).
MIC_PIPE_BYTES = 16384
MIC_AHEAD_BYTES = 3840
#: The microphone not reading for this many blocks (200 ms) is closed, not late.
MIC_CLOSED_BLOCKS = 20
F_SETPIPE_SZ = 1031


@dataclass(frozen=True)
class Room:
    delay_ms: float = 60.0
    #: Gain of the direct path (speaker to microphone), linear.
    gain: float = 0.5
    #: Reverberation time of the diffuse tail, and its energy below the direct path.
    rt60_ms: float = 300.0
    tail_db: float = -12.0
    #: Near-end background noise, dBFS RMS (white, low-passed like a fan or a street).
    noise_dbfs: float = -60.0
    seed: int = 7

    def impulse_response(self) -> np.ndarray:
        """Direct path, three early reflections and an exponentially decaying diffuse tail."""
        rng = np.random.default_rng(self.seed)
        delay = int(self.delay_ms * RATE / 1000)
        length = int(self.rt60_ms * RATE / 1000)
        tail = rng.standard_normal(length) * np.exp(-np.arange(length) / (self.rt60_ms / 6.9 / 1000 * RATE))
        tail *= math.sqrt(10 ** (self.tail_db / 10) / float((tail ** 2).sum()))
        rir = tail
        rir[0] += 1.0
        for at_ms, g in ((4.0, 0.5), (9.0, -0.35), (17.0, 0.25)):
            rir[int(at_ms * RATE / 1000)] += g
        return np.concatenate([np.zeros(delay), rir * self.gain])


class Convolver:
    """Overlap-add FFT convolution of 10 ms blocks with a fixed impulse response."""

    def __init__(self, rir: np.ndarray, block: int = BLOCK) -> None:
        self.block = block
        self.size = 1 << math.ceil(math.log2(rir.size + block))
        self.spectrum = np.fft.rfft(rir, self.size)
        self.acc = np.zeros(self.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = np.fft.irfft(np.fft.rfft(x, self.size) * self.spectrum, self.size)
        self.acc += y
        out = self.acc[: self.block].copy()
        self.acc[: -self.block] = self.acc[self.block:]
        self.acc[-self.block:] = 0.0
        return out


def load_speech(path: Path) -> np.ndarray:
    """Any audio file as 48 kHz mono float samples (int16 scale)."""
    import av

    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def noise(samples: int, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(samples + 64)
    low = np.convolve(white, np.ones(8) / 8, mode="same")[32:-32]  # a soft low-pass
    low *= 32768 * 10 ** (dbfs / 20) / max(float(np.sqrt((low ** 2).mean())), 1e-9)
    return low


def _pending(fd: int) -> int:
    """Bytes waiting in a pipe."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def make_fifo(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path)


def run(folder: Path, room: Room, near: np.ndarray, near_after_s: float, from_start: bool = False) -> None:
    speaker_fifo, mic_fifo = folder / "speaker.fifo", folder / "mic.fifo"
    for fifo in (speaker_fifo, mic_fifo):
        if not fifo.exists():
            make_fifo(fifo)
    # read-write opens never block and keep each FIFO open from both ends
    speaker = os.open(speaker_fifo, os.O_RDWR | os.O_NONBLOCK)
    mic = os.open(mic_fifo, os.O_RDWR | os.O_NONBLOCK)
    # a small pipe: what the microphone reads is at most this far behind the room
    with contextlib.suppress(OSError):
        fcntl.fcntl(mic, F_SETPIPE_SZ, MIC_PIPE_BYTES)
    logs: dict[str, BinaryIO] = {name: open(folder / f"{name}.raw", "wb")  # noqa: SIM115
                                 for name in ("far", "echo", "near", "noise", "mic")}
    convolve = Convolver(room.impulse_response())
    rng = np.random.default_rng(room.seed + 1)
    far_queue = np.zeros(0, np.int16)
    heard_at: int | None = None  # block index
    dropped = logged = 0
    #: Times the microphone fell behind while it was reading and missed blocks (a run of misses
    #: shorter than MIC_CLOSED_BLOCKS between two reads): each one, like a slip, moves the echo's
    #: delay under the canceller.  Longer runs are a microphone that was closed.
    overruns = 0
    missed = 0  # the current run of misses
    #: Times the speaker ran dry and came back (a starved machine): each one moves the echo's
    #: delay, which the canceller then finds again.
    slips = 0
    far_playing = far_started = False
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("ready", flush=True)
    start = time.monotonic()
    n = 0
    try:
        while not stop:
            with contextlib.suppress(BlockingIOError):
                while True:
                    data = os.read(speaker, 65536)
                    if not data:
                        break
                    far_queue = np.concatenate([far_queue, np.frombuffer(data[: len(data) // 2 * 2], "<i2")])
            if far_queue.size > FAR_QUEUE_MAX:
                far_queue = far_queue[-FAR_QUEUE_MAX:]
            # the speaker's 20 ms writes come at their own phase: the room plays them from a
            # 40 ms reserve, so that phase never shows as gaps in what the room hears
            far = np.zeros(BLOCK)
            if not far_playing and far_queue.size >= FAR_RESERVE:
                far_playing = True
                if far_started:
                    slips += 1  # the speaker ran dry and came back: its sound is later from now on
                far_started = True
            if far_playing:
                take = min(BLOCK, far_queue.size)
                far[:take] = far_queue[:take]
                far_queue = far_queue[take:]
                if take < BLOCK:
                    far_playing = False
            if heard_at is None and (np.abs(far).max() > HEARD or (from_start and logged)):
                heard_at = n
            echo = convolve(far)
            near_block = np.zeros(BLOCK)
            if heard_at is not None and near.size:
                first = (n - heard_at) * BLOCK - int(near_after_s * RATE)
                if first + BLOCK > 0 and first < near.size:
                    lo = max(first, 0)
                    part = near[lo : first + BLOCK]
                    near_block[lo - first : lo - first + part.size] = part
            noise_block = noise(BLOCK, room.noise_dbfs, rng)
            out = np.clip(echo + near_block + noise_block, -32768, 32767)
            try:
                if _pending(mic) > MIC_AHEAD_BYTES:
                    raise BlockingIOError  # the microphone is not reading: what it misses is not heard
                os.write(mic, out.astype("<i2").tobytes())  # 960 bytes: all or nothing (< PIPE_BUF)
            except BlockingIOError:
                dropped += 1  # the microphone is not reading (not open, or closed): not heard, not logged
                missed += 1
            else:
                if logged and 0 < missed < MIC_CLOSED_BLOCKS:
                    overruns += 1
                missed = 0
                logged += 1
                for name, block in (("far", far), ("echo", echo), ("near", near_block),
                                ("noise", noise_block), ("mic", out)):
                    logs[name].write(np.clip(block, -32768, 32767).astype("<i2").tobytes())
            n += 1
            ahead = start + n * BLOCK / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    finally:
        print(f"blocks heard {logged}, not read {dropped}, slips {slips}, overruns {overruns}", flush=True)
        (folder / "room.json").write_text(json.dumps({"heard": logged, "not_read": dropped, "slips": slips,
                                                      "overruns": overruns}))
        for log in logs.values():
            log.close()
        os.close(speaker)
        os.close(mic)


# ------------------------------------------------------------------ measuring


def find_lag(received: np.ndarray, reference: np.ndarray, part: slice | None = None,
             around: int | None = None, search: int = RATE // 4) -> int:
    """Where ``reference``'s sample i is in ``received``: i + lag (cross-correlation).

    With ``part``, only that stretch of the reference is matched, within ``search``
    samples of ``around``: a recording may slip a frame against its source over a
    call (a frame dropped or repeated on the way), so a measure over one stretch
    aligns that stretch.
    """
    step = 6  # at 8 kHz: plenty for a lag, and quick
    if part is None:
        a, b, offset = received[::step], reference[::step], 0
    else:
        lo = max(0, part.start + (around or 0) - search)
        hi = min(received.size, part.stop + (around or 0) + search)
        a, b, offset = received[lo:hi:step], reference[part][::step], lo - part.start
    size = 1 << math.ceil(math.log2(a.size + b.size))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    if part is not None:  # only lags within the search window
        keep = np.zeros(size, bool)
        keep[: max(1, (2 * search) // step + 1)] = True
        corr = np.where(keep, corr, -np.inf)
    lag = int(np.argmax(corr))
    if lag > size // 2:
        lag -= size
    return lag * step + offset


def shifted(received: np.ndarray, lag: int, size: int) -> np.ndarray:
    """``received`` moved by ``lag`` onto a timeline of ``size`` samples (zeros outside it)."""
    out = np.zeros(size)
    lo, hi = max(0, -lag), min(size, received.size - lag)
    if lo < hi:
        out[lo:hi] = received[lo + lag: hi + lag]
    return out


@dataclass
class RoomLog:
    """What the room logged, on the microphone's timeline (float samples, int16 scale)."""

    far: np.ndarray
    echo: np.ndarray
    near: np.ndarray
    noise: np.ndarray
    mic: np.ndarray
    #: The speaker ran dry and came back this many times (``run``).
    slips: int = 0
    #: The microphone fell behind and missed blocks this many times while reading (``run``).
    overruns: int = 0

    @classmethod
    def load(cls, folder: Path) -> RoomLog:
        def raw(name: str) -> np.ndarray:
            return np.frombuffer((folder / f"{name}.raw").read_bytes(), "<i2").astype(np.float64)

        parts = {name: raw(name) for name in ("far", "echo", "near", "noise", "mic")}
        size = min(x.size for x in parts.values())
        summary = folder / "room.json"
        counts = json.loads(summary.read_text()) if summary.exists() else {}
        return cls(**{name: x[:size] for name, x in parts.items()},
                   slips=int(counts.get("slips", 0)), overruns=int(counts.get("overruns", 0)))

    def first(self, part: str) -> int:
        """The first sample of ``part`` louder than HEARD (its size if none)."""
        loud = np.flatnonzero(np.abs(getattr(self, part)) > HEARD)
        return int(loud[0]) if loud.size else self.mic.size

    def lag(self, received: np.ndarray, part: slice | None = None, around: int | None = None,
            search: int = RATE // 4) -> int:
        """Where the microphone's sample i is in ``received``: i + lag (``find_lag``)."""
        return find_lag(received, self.mic, part, around, search)

    def align(self, received: np.ndarray, part: slice | None = None) -> np.ndarray:
        """``received`` (what reached the far end) on the microphone's timeline; with ``part``,
        aligned on that stretch (see ``lag``)."""
        lag = self.lag(received)
        if part is not None:
            lag = self.lag(received, part, around=lag)
        return shifted(received, lag, self.mic.size)

    def _single_talk(self, start: int, end: int, window: int) -> list[slice]:
        """Windows of far-end single talk: loud echo, no near speech."""
        floor = 10 * max(float((self.noise ** 2).mean()), 1.0)
        return [slice(i, i + window) for i in range(start, end - window + 1, window)
                if (self.echo[i:i + window] ** 2).mean() > floor and not self.near[i:i + window].any()]

    def erle_db(self, out: np.ndarray, start: int, end: int, window: int = RATE // 10) -> float | None:
        """Echo return loss enhancement over the single-talk windows in [start, end)."""
        windows = self._single_talk(start, end, window)
        if not windows:
            return None
        mic = sum(float((self.mic[w] ** 2).sum()) for w in windows)
        sent = sum(float((out[w] ** 2).sum()) for w in windows)
        return 10 * math.log10(mic / max(sent, 1.0))

    def erle_windows_db(self, out: np.ndarray, start: int, end: int, window: int = RATE // 10) -> list[float]:
        """The echo return loss enhancement of each single-talk window in [start, end), in order."""
        return [10 * math.log10(max(float((self.mic[w] ** 2).sum()), 1.0) / max(float((out[w] ** 2).sum()), 1.0))
                for w in self._single_talk(start, end, window)]

    def convergence_s(self, out: np.ndarray, window_s: float = 0.5) -> float | None:
        """From the far end's first sound to the first window within 3 dB of the settled ERLE."""
        start, end = self.first("far"), self.first("near")
        window = int(window_s * RATE)
        settled = self.erle_db(out, start + 3 * RATE, end)
        if settled is None:
            return None
        for i in range(start, end - window + 1, window // 2):
            value = self.erle_db(out, i, i + window, window)
            if value is not None and value >= settled - 3:
                return (i + window - start) / RATE
        return None

    def double_talk(self, seconds: float = 5.0) -> slice:
        """The near speech's first ``seconds`` (the far end still talks: the scenario says so)."""
        start = self.first("near")
        return slice(start, min(self.mic.size, start + int(seconds * RATE)))

    def stoi(self, out: np.ndarray, part: slice) -> float:
        """Intelligibility (STOI, 0-1) of the near speech in ``out`` over ``part``."""
        from pystoi import stoi

        return float(stoi(self.near[part], out[part], RATE))

    def level_db(self, out: np.ndarray, part: slice) -> float:
        """The level of ``out`` against the clean near speech over ``part``, dB."""
        return 10 * math.log10(max(float((out[part] ** 2).mean()), 1.0) / max(float((self.near[part] ** 2).mean()), 1.0))

    def snr_db(self, signal: np.ndarray) -> float:
        """Near speech against noise in ``signal``: speech windows' power over noise-only windows'."""
        window = RATE // 10
        speech, quiet = [], []
        for i in range(0, signal.size - window + 1, window):
            power = float((signal[i:i + window] ** 2).mean())
            near = float((self.near[i:i + window] ** 2).mean())
            if near > 10 * float((self.noise[i:i + window] ** 2).mean()):
                speech.append(power)
            elif not self.near[i:i + window].any() and not self.echo[i:i + window].any():
                quiet.append(power)
        if not speech or not quiet:
            raise ValueError("no speech or no quiet windows to measure a signal-to-noise ratio")
        noise_power = max(float(np.median(quiet)), 1e-3)
        return 10 * math.log10(max(float(np.mean(speech)) - noise_power, 1e-3) / noise_power)


def asoundrc(folder: Path) -> str:
    """ALSA PCMs 'Room_Mic' and 'Room_Speaker' on this room's FIFOs."""
    return f"""
pcm.Room_Mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{folder / 'mic.fifo'}"
    format "raw"
}}
pcm.Room_Speaker {{
    type file
    slave.pcm "null"
    file "{folder / 'speaker.fifo'}"
    format "raw"
}}
"""


# ------------------------------------------------------------- a call in it


@dataclass
class RoomCall:
    """One call from a far end into a kiosk that stands in the room."""

    log: RoomLog
    #: What reached the far end from the kiosk's microphone (its recording, 48 kHz).
    received: np.ndarray
    #: The same on the microphone's timeline (aligned over the whole call).
    sent: np.ndarray
    #: The kiosk's CPU, % of a core, over the connected call (None: not measurable here).
    kiosk_cpu_pct: float | None
    kiosk_ended: dict[str, object]
    kiosk_stderr: str = ""


def speech(folder: Path) -> tuple[Path, Path]:
    """A far-end talker and a near-end talker (two voices of espeak-ng), as WAV files."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed (scripts/setup --test installs it)")
    far, near = folder / "far-talker.wav", folder / "near-talker.wav"
    for path, voice, speed, text in (
        (far, "en-us", "150", "The quick brown fox jumps over the lazy dog. A kiosk is a speakerphone, "
                              "and the person on the other end must not hear their own voice come back. "
                              "Echo cancellation takes it out of what the microphone hears."),
        (near, "en-gb+f3", "140", "Hello, I am standing at the door. Please let me in, it is cold outside "
                                  "and I have a parcel for you."),
    ):
        if not path.exists():
            subprocess.run(["espeak-ng", "-v", voice, "-s", speed, "-w", str(path), text], check=True,
                           capture_output=True, timeout=60)
    return far, near


def start_room(folder: Path, room: Room, *, near: Path | None = None, near_after_s: float = 0.0,
               near_from_start: bool = False, started: list[Any]) -> Path:
    """Start the room process in ``folder`` (appended to ``started``; stop it); the HOME whose
    ``.asoundrc`` has its 'Room_Mic' and 'Room_Speaker'."""
    from callctl.harness.child import Child

    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "home"
    home.mkdir(exist_ok=True)
    (home / ".asoundrc").write_text(asoundrc(folder))
    argv = [sys.executable, "-m", "callctl.harness.room", str(folder), "--delay-ms", str(room.delay_ms),
            "--gain", str(room.gain), "--rt60-ms", str(room.rt60_ms), "--tail-db", str(room.tail_db),
            "--noise-dbfs", str(room.noise_dbfs), "--near-after", str(near_after_s)]
    if near is not None:
        argv += ["--near", str(near)]
    if near_from_start:
        argv.append("--near-from-start")
    proc = Child(argv, name="room")
    started.append(proc)
    proc.wait_line("ready", timeout=30)
    return home


def call_in_room(folder: Path, server_url: str, secret_file: Path, *, far: Path | None,
                 near: Path | None, near_after_s: float, seconds: float, room: Room = Room(),
                 kiosk_args: tuple[str, ...] = (), near_from_start: bool = False,
                 kiosk_env: dict[str, str] | None = None) -> RoomCall:
    """``alice`` calls the kiosk ``bob``, whose mic and speaker are this room; ``far`` is what
    she says (None: silence), ``near`` what is said in the room ``near_after_s`` after she is first
    heard there (``near_from_start``: after the microphone is first read).  The call lasts
    ``seconds``."""
    from callctl.harness import procfs
    from callctl.harness.child import Child, callctl_command, callctl_env

    env = callctl_env(None, CALLCTL_SECRET_FILE=str(secret_file), CALLCTL_SERVER=server_url)
    started: list[Child] = []
    try:
        home = start_room(folder, room, near=near, near_after_s=near_after_s, near_from_start=near_from_start,
                          started=started)
        kiosk = Child([*callctl_command(), "--json", "--as", "bob", "listen", "--device", "kiosk",
                       "--auto-accept", "--once", "--audio-in", "mic:room_mic",
                       "--audio-out", "speaker:room_speaker", *kiosk_args],
                      name="kiosk", env={**env, "HOME": str(home), **(kiosk_env or {})})
        started.append(kiosk)
        kiosk.wait_event("registered", timeout=30)
        record = folder / "far-end.wav"
        caller = Child([*callctl_command(), "--json", "--as", "alice", "call", "bob", "--device", "desk",
                        "--audio-in", f"file:{far}" if far is not None else "silence",
                        "--audio-out", "null", "--record", str(record), "--hangup-after", str(seconds)],
                       name="caller", env=env)
        started.append(caller)
        kiosk.wait_event("call.connected", timeout=30)
        cpu_pct = None
        if procfs.available():
            t0, c0 = time.monotonic(), procfs.cpu_seconds(kiosk.pid)
            caller.wait_event("call.connected", timeout=30)
            # the kiosk's CPU until just before the call ends
            end = time.monotonic() + seconds - 1.0
            while time.monotonic() < end and caller.returncode is None:
                time.sleep(0.2)
            cpu_pct = 100 * (procfs.cpu_seconds(kiosk.pid) - c0) / (time.monotonic() - t0)
        if caller.wait_exit(seconds + 30) != 0:
            raise RuntimeError(f"the far end's call failed: {caller.describe()}")
        if kiosk.wait_exit(30) != 0:
            raise RuntimeError(f"the kiosk's call failed: {kiosk.describe()}")
        ended = kiosk.find("call.ended") or {}
        kiosk_stderr = kiosk.stderr
    finally:
        for child in reversed(started):
            child.stop()
    log = RoomLog.load(folder)
    received = load_speech(record)
    return RoomCall(log, received, log.align(received), cpu_pct, dict(ended), kiosk_stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callctl.harness.room", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--delay-ms", type=float, default=60.0)
    parser.add_argument("--gain", type=float, default=0.5)
    parser.add_argument("--rt60-ms", type=float, default=300.0)
    parser.add_argument("--tail-db", type=float, default=-12.0)
    parser.add_argument("--noise-dbfs", type=float, default=-60.0)
    parser.add_argument("--near", type=Path, help="near-end speech (any audio file)")
    parser.add_argument("--near-after", type=float, default=0.0,
                        help="seconds after the far end is first heard")
    parser.add_argument("--near-gain", type=float, default=1.0)
    parser.add_argument("--near-from-start", action="store_true",
                        help="count --near-after from the microphone's first read, not the far end")
    args = parser.parse_args(argv)
    room = Room(args.delay_ms, args.gain, args.rt60_ms, args.tail_db, args.noise_dbfs)
    near = load_speech(args.near) * args.near_gain if args.near else np.zeros(0)
    args.folder.mkdir(parents=True, exist_ok=True)
    run(args.folder, room, near, args.near_after, args.near_from_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
