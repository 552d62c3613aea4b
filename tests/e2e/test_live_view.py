"""`call` and `listen` on a real terminal: the live view a person sees, and its keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from tests.cli import Callctl
from tests.terminal import Terminal

OpenTerminal = Callable[..., Coroutine[Any, Any, Terminal]]


@pytest.fixture
async def tty(cli: Callctl) -> AsyncIterator[OpenTerminal]:
    opened: list[Terminal] = []

    async def open_terminal(user: str, *args: str, cols: int = 100, rows: int = 30) -> Terminal:
        term = Terminal(cli._argv(user, args, None, json=False), {**cli.env, "TERM": "xterm-256color"},
                        cols=cols, rows=rows)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        await term.close()


async def test_an_audio_call_on_a_terminal_shows_the_panel_and_takes_keys(tty: OpenTerminal) -> None:
    # default options: no --video-out, no --json: what a person types
    bob = await tty("bob", "listen", "--device", "kiosk", "--audio-in", "tone:660", "--audio-out", "null")
    await bob.wait_for("bob (online)")
    assert "waiting for calls" in bob.text and "Ctrl-C quit" in bob.text
    alice = await tty("alice", "call", "bob", "--device", "desk", "--audio-in", "tone:440", "--audio-out", "null")
    await bob.wait_for("ringing: incoming call (audio)")
    assert "a answer · d decline" in bob.text and "alice" in bob.text
    await alice.wait_for("calling")
    bob.type("a")
    await bob.wait_for("in call")
    await alice.wait_for("in call")
    await bob.wait_for("m mute · h hold · q hang up")
    bob.type("m")
    await bob.wait_for("MUTED")
    await alice.wait_for(lambda t: "muted" in t.text.split("remote", 1)[-1].split("\n", 1)[0])
    bob.type("m")
    await bob.wait_for(lambda t: "MUTED" not in t.text)
    alice.type("q")
    assert await alice.exit_code() == 0
    # the last frame says how the call ended, and nothing about waiting for calls
    assert "ended: hangup (by you)" in alice.text, alice.text
    assert "waiting for calls" not in alice.text
    assert alice.text.count("╭") == 1, alice.text  # one panel, drawn in place
    widths = {len(line) for line in alice.text.splitlines() if line.startswith(("│", "╭", "╰"))}
    assert len(widths) == 1, widths  # a stable panel width
    await bob.wait_for("alice: hangup (by alice)")
    await bob.wait_for("waiting for calls")
    bob.type("\x03")  # Ctrl-C
    assert await bob.exit_code() == 130


async def test_keys_decline_a_ring_and_cancel_a_call(tty: OpenTerminal) -> None:
    bob = await tty("bob", "listen", "--device", "kiosk", "--audio-in", "tone:660", "--audio-out", "null")
    await bob.wait_for("bob (online)")
    alice = await tty("alice", "call", "bob", "--device", "desk", "--audio-in", "tone:440", "--audio-out", "null")
    await bob.wait_for("a answer · d decline")
    bob.type("d")
    assert await alice.exit_code() == 3
    assert "ended: declined (by bob)" in alice.text, alice.text
    await bob.wait_for("alice: declined (by you)")
    carol = await tty("carol", "call", "bob", "--device", "desk", "--audio-in", "tone:440", "--audio-out", "null")
    await carol.wait_for("q cancel")
    await bob.wait_for("ringing: incoming call")
    carol.type("q")
    assert await carol.exit_code() == 7
    assert "ended: cancelled (by you)" in carol.text
    await bob.wait_for("carol: cancelled (by carol)")


async def test_a_video_call_draws_the_frames_above_a_status_line(cli: Callctl, tty: OpenTerminal) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--once", "--video-in", "testsrc",
                           "--video-size", "160x120", "--video-out", "null")
    alice = await tty("alice", "call", "bob", "--device", "desk", "--audio-in", "tone:440",
                      "--audio-out", "null", "--video", "--video-in", "testsrc", "--video-size", "160x120",
                      "--hangup-after", "4", cols=80, rows=24)
    bottom = 23

    def video_and_status(t: Terminal) -> bool:
        return "▀" in t.line(0) and t.line(bottom).startswith("bob · in call")

    await alice.wait_for(video_and_status)
    # the frames never overwrite the status line, which keeps its timer and keys
    await alice.wait_for(lambda t: video_and_status(t) and "00:02" in t.line(bottom))
    assert "q hang up" in alice.line(bottom)
    assert "▀" not in alice.line(bottom)
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    # the last frame is the panel on a clean screen: no frozen video left over
    assert "ended: hangup (by you)" in alice.text
    assert "▀" not in alice.text, alice.text
