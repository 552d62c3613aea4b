"""A real call on this machine: a local server, two endpoints with different tones, a summary."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from callctl.commands import _phone
from callctl.engine.events import Ev
from callctl.exitcodes import ExitCode, for_reason


def demo(
    ctx: typer.Context,
    duration: Annotated[float, typer.Option(min=1, max=3600, help="Seconds the call lasts.")] = 10.0,
) -> None:
    _phone.run(_demo(ctx.obj, duration))


async def _demo(settings: Any, duration: float) -> int:
    from callctl.engine.commands import status_of
    from callctl.engine.phone import CallPolicy, Phone
    from callctl.engine.session import CallLimits
    from callctl.harness.server import ServerProcess
    from callctl.media.adjust import preload
    from callctl.media.assembly import MediaOptions
    from callctl.signaling.protocol import Media
    from callctl.ui.output import JsonOutput, LiveView, PlainOutput

    preload()
    with tempfile.TemporaryDirectory(prefix="callctl-demo-") as tmp:
        # started from this thread: the server dies with the thread that spawned it
        server = ServerProcess(Path(tmp), ["--log-level", "warning"]).start()
        try:
            def phone(user: str, hz: int, policy: CallPolicy) -> Phone:
                client = server.client(user, device="demo", service="demo")
                return Phone(client=client, user=user, device="demo", policy=policy,
                             media=MediaOptions(audio_in=f"tone:{hz}", audio_out="null"))

            alice = phone("alice", 440, CallPolicy())
            bob = phone("bob", 660, CallPolicy(auto_accept=True))
            setup: dict[str, float] = {}

            def note(who: str) -> Any:
                def listener(event: str, record: dict[str, Any]) -> None:
                    if event == Ev.CALL_CONNECTED and who == "alice":
                        setup["ms"] = record["setup_ms"]
                return listener

            view = None
            if settings.json:
                alice.listeners.append(JsonOutput())
            elif sys.stdout.isatty():
                view = LiveView(lambda: status_of(alice), lambda cmd: None,
                                lambda: alice.session.peer.stats() if alice.session and alice.session.peer else _none(),
                                one_call=True)
                alice.listeners.append(view)
                bob.listeners.append(lambda e, r: view(e, {**r, "peer": r.get("peer")}) if e == Ev.CALL_INCOMING else None)
            else:
                alice.listeners.append(_prefixed("alice", PlainOutput()))
                bob.listeners.append(_prefixed("bob", PlainOutput()))
            alice.listeners.append(note("alice"))
            for p in (alice, bob):
                p.start()
            await asyncio.wait_for(asyncio.gather(alice.registered.wait(), bob.registered.wait()), 10)
            if view is not None:
                view.start()
            started = time.monotonic()
            session = alice.dial("bob", Media.AUDIO, CallLimits(ring_timeout=10, hangup_after=duration))
            try:
                await session.ended.wait()
                await asyncio.wait_for(bob.call_ended.wait(), 5)
            finally:
                if view is not None:
                    await view.stop()
            outcome = session.outcome()
            bob_session = bob.calls_done[-1] if bob.calls_done else None
            a_peer = session.peer
            b_peer = None
            if bob.last_session is not None:
                b_peer = bob.last_session.peer
            summary: dict[str, Any] = {
                "reason": outcome.reason.value,
                "setup_ms": setup.get("ms"),
                "call_s": round(time.monotonic() - started, 1),
                "frames_alice_to_bob": b_peer.received.frames if b_peer else 0,
                "frames_bob_to_alice": a_peer.received.frames if a_peer else 0,
                "frames_sent_alice": a_peer.sent.frames if a_peer else 0,
                "frames_sent_bob": b_peer.sent.frames if b_peer else 0,
                "bob_reason": bob_session.reason.value if bob_session else None,
                "stats": a_peer.call_stats.summary() if a_peer else {},
            }
            for p in (alice, bob):
                await p.close()
        finally:
            server.stop()
    if settings.json:
        JsonOutput()(Ev.DEMO_SUMMARY, {"v": 1, "ts": round(time.time(), 3), "event": Ev.DEMO_SUMMARY.value,
                                       **summary})
    else:
        print(
            f"\ncall ended: {summary['reason']}\n"
            f"set-up (dial → connected): {summary['setup_ms']} ms\n"
            f"audio frames alice → bob: {summary['frames_alice_to_bob']} received "
            f"of {summary['frames_sent_alice']} sent (440 Hz)\n"
            f"audio frames bob → alice: {summary['frames_bob_to_alice']} received "
            f"of {summary['frames_sent_bob']} sent (660 Hz)"
            + (f"\nlink (alice): {_stats_text(summary['stats'])}" if summary["stats"] else ""),
            flush=True,
        )
    if outcome.reason.value != "hangup":
        return int(for_reason(outcome.reason))
    if not summary["frames_alice_to_bob"] or not summary["frames_bob_to_alice"]:
        print("callctl: no audio arrived", file=sys.stderr)
        return int(ExitCode.NETWORK_LOST)
    return 0


async def _none() -> dict[str, float]:
    return {}


def _prefixed(who: str, out: Any) -> Any:
    def listener(event: str, record: dict[str, Any]) -> None:
        if event in (Ev.CALL_ENDED, Ev.CALL_CONNECTED, Ev.CALL_INCOMING, Ev.CALL_OUTGOING, Ev.REGISTERED):
            out(event, record)
    return listener


def _stats_text(stats: dict[str, Any]) -> str:
    out = f"{stats['packets_lost']} of {stats['packets_received'] + stats['packets_lost']} packets lost"
    if "rtt_ms" in stats:
        out += f", rtt {stats['rtt_ms']:.0f} ms"
    if "mos" in stats:
        out += f", MOS {stats['mos']:.1f}"
    return out
