"""Hooks by their rules: no shell unless asked, output and exit codes logged, killed when too slow,
a bad one refused before any call."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli import Callctl


def _running(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry))
    return pids


async def test_a_hook_runs_without_a_shell_and_its_output_and_exit_code_are_logged(
        cli: Callctl, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    bob = await cli.listen("bob", "--auto-accept", "--once",
                           "--on-connect", f"echo connected;touch {pwned} $(touch {pwned})",
                           "--on-end", "sh -c 'echo \"ended: $CALLCTL_REASON\" >&2; exit 3'")
    alice = await cli.call("alice", "bob", "--hangup-after", "0.5")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    assert not pwned.exists(), "the hook's command line went through a shell"
    err = bob.stderr
    assert f"hook --on-connect (echo): connected;touch {pwned} $(touch {pwned})" in err, err
    assert "hook --on-end (sh): ended: hangup" in err, err
    assert "hook --on-end (sh) exited 3" in err, err


async def test_a_hook_that_runs_too_long_is_killed_with_its_children(cli: Callctl) -> None:
    marker = "sleep 61.25"
    bob = await cli.start("bob", "listen", "--device", "kiosk", "--audio-out", "null", "--audio-in", "tone",
                          "--auto-accept", "--once", "--on-connect", f"sh -c '{marker}; true'",
                          env={"CALLCTL_HOOK_TIMEOUT_S": "1"})
    await bob.wait_event("registered")
    alice = await cli.call("alice", "bob", "--hangup-after", "3")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    assert "hook --on-connect (sh) ran longer than 1 s: killed" in bob.stderr, bob.stderr
    assert not _running(marker), "the hook's child outlived it"


async def test_a_hook_that_cannot_run_is_one_line_and_exit_2(cli: Callctl) -> None:
    for hook, words in ((["--on-end", "no-such-program-4711 x"], "no program 'no-such-program-4711'"),
                        (["--on-ring", "echo 'unbalanced"], "cannot read the command line")):
        for command in ("listen", "call"):
            args = ("call", "bob") if command == "call" else ("listen",)
            code, _, err = await cli.run("alice", *args, "--audio-in", "tone", "--audio-out", "null", *hook)
            assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (command, err)
