#!/usr/bin/env python3
"""A speakerphone kiosk's audio, measured: echo cancellation, double talk, noise suppression, CPU.

Every figure comes from real calls on loopback: a server, a ``callctl listen``
kiosk whose microphone and speaker are ALSA PCMs on FIFOs with a simulated
room between them (``callctl.harness.room``: the speaker's output reaches the
microphone after ``--delay-ms``, at ``--gain``, with a reverberant tail, plus
near-end noise), and a ``callctl call`` far end that says a sentence
(espeak-ng) and records what it receives.  The room logs the echo, the near
speech and the noise it mixed on the microphone's timeline; the far end's
recording is aligned to it by cross-correlation.

Scenarios, each with the kiosk's defaults (echo cancellation + noise
suppression) and with the processing off, in the same run:

* **echo**: the far end talks; 6 s later a second voice talks in the room
  while the far end still does (double talk).  ERLE (echo return loss
  enhancement: the echo's power at the microphone over what reaches the far
  end) over far-end single talk from 2 s on; the time until ERLE is within
  3 dB of that; in double talk, STOI (``pystoi``) of the near voice at the far
  end against the clean near voice, and its level (a half-duplex canceller
  would mute it); the kiosk's CPU over the call.
* **noise**: no far end; the near voice over loud noise (``--noise-dbfs``).
  Speech-to-noise ratio at the microphone and at the far end.
* **fec**: two peer connections in a subprocess (real Opus with in-band FEC,
  DTLS-SRTP) through the loopback relay, speech one way with 5 % of its RTP
  packets dropped at random, then 5 % in runs of 2; the receiver decodes the
  next packet's FEC in a lost one's place, or (``CALLCTL_FEC_DECODE=0``)
  conceals it.  Packets dropped, frames rebuilt, frames concealed, and STOI of
  the received speech against the sent speech, in 3 s stretches aligned each.

Targets (issue: speakerphone audio): ERLE >= 30 dB, converged <= 2 s; double
talk STOI >= 0.85 with no muting; CPU added <= 3 % of a core.  Exit status 0
when every target is met, 1 when one is missed, 2 when the bench cannot run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from callctl.harness.bench import cleaning_up, keep_or_remove, log, stop_on_signals
from callctl.harness.room import RATE, Room, call_in_room, speech
from callctl.harness.server import ServerProcess

OFF = ("--no-aec", "--no-noise-suppression")
FEC_SECONDS = 15.0


def fec_child(burst: int, speech_file: Path, record: Path) -> dict[str, Any]:
    """(In the subprocess) speech over the lossy relay to a recording; the counts."""
    import asyncio

    from callctl.harness.relay import Impairment, LossyLink
    from callctl.media.audio import FileSink, FileSource, NullSink, SilenceSource
    from callctl.media.peer import MediaCallbacks, PeerConnection
    from callctl.media.voice import FEC_RECOVERED

    async def run() -> dict[str, Any]:
        lossy = Impairment(loss=0.05, burst=burst)
        link = await LossyLink(to_a=lossy).start()
        up = [asyncio.Event(), asyncio.Event()]
        a = PeerConnection([], SilenceSource(), [FileSink(record)],
                           MediaCallbacks(on_up=up[0].set, on_lost=lambda why: None))
        b = PeerConnection([], FileSource(speech_file, loop=True), [NullSink()],
                           MediaCallbacks(on_up=up[1].set, on_lost=lambda why: None))
        try:
            await link.negotiate(a, b)
            await asyncio.wait_for(asyncio.gather(up[0].wait(), up[1].wait()), 10)
            a.start()
            b.start()
            await asyncio.sleep(FEC_SECONDS)  # the stretch of speech being measured
        finally:
            await a.close()
            await b.close()
            link.close()
        return {"dropped": lossy.rtp_counts[1], "sent": sum(lossy.rtp_counts),
                "recovered": FEC_RECOVERED[0], "concealed": a.playout.stats.concealed}

    return asyncio.run(run())


def fec_run(tmp: Path, speech_file: Path, burst: int, decode: bool) -> dict[str, Any]:
    import os
    import subprocess

    from callctl.harness.room import find_lag, load_speech, shifted
    from pystoi import stoi

    record = tmp / f"fec-{burst}-{'on' if decode else 'off'}.wav"
    env = {**os.environ, "CALLCTL_FEC_DECODE": "1" if decode else "0"}
    done = subprocess.run([sys.executable, __file__, "--fec-child", str(burst), str(speech_file), str(record)],
                          capture_output=True, text=True, env=env, timeout=FEC_SECONDS + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the FEC run failed: {done.stderr[-1500:]}")
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    sent = load_speech(speech_file)
    received = load_speech(record)
    reference = np.tile(sent, int(received.size / max(sent.size, 1)) + 2)
    lag = find_lag(received, reference[: received.size + RATE])
    scores = []
    for start in range(RATE, received.size - 4 * RATE, 3 * RATE):
        part = slice(start, start + 3 * RATE)
        if not reference[part].any():
            continue
        here = find_lag(received, reference, part, around=lag, search=RATE // 10)
        aligned = shifted(received, here, reference.size)
        scores.append(float(stoi(reference[part], aligned[part], RATE)))
    counts["stoi"] = statistics.fmean(scores) if scores else None
    return counts


def echo_run(tmp: Path, server: ServerProcess, voices: tuple[Path, Path], room: Room, args: tuple[str, ...],
             seconds: float, name: str) -> dict[str, Any]:
    far, near = voices
    call = call_in_room(tmp / name, server.url, server.secret_file, far=far, near=near, near_after_s=6.0,
                        seconds=seconds, room=room, kiosk_args=args)
    rl = call.log
    heard, talk = rl.first("far"), rl.first("near")
    part = rl.double_talk(4.0)
    sent = rl.align(call.received, part)
    return {
        "erle_db": rl.erle_db(call.sent, heard + 2 * RATE, talk),
        "converged_s": rl.convergence_s(call.sent),
        "double_talk_stoi": rl.stoi(sent, part),
        "mic_stoi": rl.stoi(rl.mic, part),
        "double_talk_level_db": rl.level_db(sent, part),
        "echo_to_near_db": rl.level_db(rl.echo, part),
        "kiosk_cpu_pct": call.kiosk_cpu_pct,
    }


def noise_run(tmp: Path, server: ServerProcess, voices: tuple[Path, Path], room: Room, args: tuple[str, ...],
              name: str) -> dict[str, Any]:
    _, near = voices
    # no far end: the near voice starts 2 s after the microphone is first read (noise alone before)
    call = call_in_room(tmp / name, server.url, server.secret_file, far=None, near=near, near_after_s=2.0,
                        seconds=11.0, room=room, kiosk_args=args, near_from_start=True)
    rl = call.log
    part = slice(0, rl.mic.size)
    sent = rl.align(call.received, rl.double_talk(6.0))
    return {"snr_mic_db": rl.snr_db(rl.mic[part]), "snr_sent_db": rl.snr_db(sent[part])}


def mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="calls per scenario and setting (default 2)")
    ap.add_argument("--delay-ms", type=float, default=60.0)
    ap.add_argument("--gain", type=float, default=0.5)
    ap.add_argument("--noise-dbfs", type=float, default=-35.0, help="noise in the noise scenario")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the room logs and recordings")
    ap.add_argument("--only", choices=("echo", "noise", "fec"), help="one scenario only")
    ap.add_argument("--fec-child", nargs=3, metavar=("BURST", "SPEECH", "RECORD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fec_child:
        print(json.dumps(fec_child(int(args.fec_child[0]), Path(args.fec_child[1]), Path(args.fec_child[2]))))
        return 0
    stop_on_signals(timeout=1800)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    server = None
    try:
        voices = speech(tmp)
        (tmp / "server").mkdir()
        server = ServerProcess(tmp / "server").start()
        room = Room(delay_ms=args.delay_ms, gain=args.gain)
        noisy = Room(delay_ms=args.delay_ms, gain=args.gain, noise_dbfs=args.noise_dbfs)
        echo: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        noise: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        wanted = {args.only} if args.only else {"echo", "noise", "fec"}
        for i in range(args.runs):
            for setting, kiosk_args in (("on", ()), ("off", OFF)):
                if "echo" in wanted:
                    log(f"echo, processing {setting}, run {i + 1}")
                    echo[setting].append(echo_run(tmp, server, voices, room, kiosk_args, 12.0,
                                                  f"echo-{setting}-{i}"))
                if "noise" in wanted:
                    log(f"noise, processing {setting}, run {i + 1}")
                    noise[setting].append(noise_run(tmp, server, voices, noisy, kiosk_args,
                                                    f"noise-{setting}-{i}"))
        fec: dict[str, dict[str, Any]] = {}
        for burst in ((1, 2) if "fec" in wanted else ()):
            for decode in (True, False):
                log(f"fec: 5 % loss in runs of {burst}, FEC decoding {'on' if decode else 'off'}")
                fec[f"{burst}-{'on' if decode else 'off'}"] = fec_run(tmp, voices[0], burst, decode)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"bench-audio: cannot run: {exc}", file=sys.stderr)
        return 2
    finally:
        cleaning_up()
        if server is not None:
            server.stop()
        keep_or_remove(tmp, args.keep)
    report = {"echo": echo, "noise": noise, "fec": fec, "room": {"delay_ms": args.delay_ms, "gain": args.gain,
                                                     "noise_dbfs": args.noise_dbfs}}
    on, off = echo["on"], echo["off"]
    cpu_on, cpu_off = mean(on, "kiosk_cpu_pct"), mean(off, "kiosk_cpu_pct")
    added = cpu_on - cpu_off if cpu_on is not None and cpu_off is not None else None
    erle, conv = mean(on, "erle_db"), max(((r["converged_s"] or 99.0) for r in on), default=99.0)
    stoi, level = mean(on, "double_talk_stoi"), min((r["double_talk_level_db"] for r in on), default=-99.0)
    snr_gain = ((mean(noise["on"], "snr_sent_db") or 0) - (mean(noise["on"], "snr_mic_db") or 0))
    snr_gain_off = ((mean(noise["off"], "snr_sent_db") or 0) - (mean(noise["off"], "snr_mic_db") or 0))
    checks = [
        ("ERLE in far-end single talk", erle is not None and erle >= 30, f"{erle or 0:.1f} dB (target >= 30)"),
        ("converged", conv <= 2.0, f"{conv:.1f} s, worst run (target <= 2 s)"),
        ("double talk STOI", stoi is not None and stoi >= 0.85, f"{stoi or 0:.2f} (target >= 0.85)"),
        ("near talker not muted", level >= -6, f"{level:.1f} dB against the clean voice, worst run"),
        ("CPU added", added is not None and added <= 3.0, f"{added or 0:.1f} % of a core (target <= 3 %)"),
    ] if on else []
    if args.json:
        report["checks"] = [{"what": w, "met": bool(ok), "figure": f} for w, ok, f in checks]
        print(json.dumps(report, indent=2))
    else:
        print(f"speakerphone audio: room {args.delay_ms:g} ms, direct path x{args.gain:g}, "
              f"{args.runs} call(s) per setting")
        print(f"{'':28} {'processing on':>14} {'off':>8}")
        for key, label, fmt in (("erle_db", "ERLE, single talk (dB)", "{:.1f}"),
                                ("converged_s", "converged after (s)", "{:.1f}"),
                                ("double_talk_stoi", "double talk STOI", "{:.2f}"),
                                ("double_talk_level_db", "near voice level (dB)", "{:+.1f}"),
                                ("echo_to_near_db", "echo against near (dB)", "{:+.1f}"),
                                ("kiosk_cpu_pct", "kiosk CPU (% of a core)", "{:.1f}")):
            cells = [mean(echo[s], key) for s in ("on", "off")]
            print(f"{label:28} " + " ".join(f"{(fmt.format(c) if c is not None else '-'):>{w}}"
                                            for c, w in zip(cells, (14, 8))))
        print(f"{'noise: SNR at the mic (dB)':28} {mean(noise['on'], 'snr_mic_db') or 0:>14.1f} "
              f"{mean(noise['off'], 'snr_mic_db') or 0:>8.1f}")
        print(f"{'noise: SNR sent (dB)':28} {mean(noise['on'], 'snr_sent_db') or 0:>14.1f} "
              f"{mean(noise['off'], 'snr_sent_db') or 0:>8.1f}")
        print(f"{'noise: SNR gain (dB)':28} {snr_gain:>14.1f} {snr_gain_off:>8.1f}")
        print(f"\nOpus FEC on receive, speech through 5 % loss ({FEC_SECONDS:g} s each):")
        print(f"{'loss':18} {'decoding':>8} {'dropped':>8} {'rebuilt':>8} {'concealed':>10} {'STOI':>6}")
        for key, row in fec.items():
            burst, setting = key.split("-")
            label = "random" if burst == "1" else "in runs of 2"
            stoi_text = f"{row['stoi']:.3f}" if row.get("stoi") is not None else "-"
            print(f"{label:18} {setting:>8} {row['dropped']:>8} {row['recovered']:>8} {row['concealed']:>10} "
                  f"{stoi_text:>6}")
        for what, ok, figure in checks:
            print(f"{'PASS' if ok else 'MISS'}  {what}: {figure}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
