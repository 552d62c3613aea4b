"""The browser softphone across NATs: Chromium in its own namespace behind the symmetric NAT.

Chromium runs in host ``c`` (behind ``nat_b``), a callctl kiosk on ``a``
(behind ``nat_a``); the page gets its STUN/TURN servers from the signaling
server like callctl does, so the call goes through coturn.
"""

from __future__ import annotations

import math
import shutil
import stat
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from callctl.harness import netns
from callctl.harness.server import ServerProcess
from tests.audio import tone_fraction
from tests.browser.conftest import watch_errors
from tests.net.conftest import CALLEE_HZ, CALLER_HZ, NetCallctl

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (scripts/setup --browser installs it)", allow_module_level=True)

BROWSER_HZ = 523.0
WAIT_MS = 20_000


@pytest.fixture
async def page(net: netns.Topology, nat_server: ServerProcess, tmp_path: Path) -> AsyncIterator[object]:
    """Chromium in host ``c``, signed in as ``operator`` on the page of the server in ``pub``."""
    wav = tmp_path / "mic.wav"
    t = np.arange(48000 * 10)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((np.sin(2 * math.pi * BROWSER_HZ * t / 48000) * 12000).astype("<i2").tobytes())
    wrapper = tmp_path / "chromium-in-c"  # Playwright starts the browser: this puts it in host c
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(net.prefix("c"))} {CHROMIUM} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(wrapper), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
                  # a microphone needs a secure context: https in the field, this flag here
                  f"--unsafely-treat-insecure-origin-as-secure={nat_server.url}"])
        try:
            context = await browser.new_context(permissions=["microphone", "camera"])
            tab = await context.new_page()
            tab.on("console", lambda m: print("page:", m.text))
            errors: list[str] = []
            watch_errors(tab, errors)
            await tab.goto(nat_server.url + "/")
            await tab.get_by_test_id("token").fill(nat_server.token("operator"))
            await tab.get_by_test_id("signin-button").click()
            await tab.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
            yield tab
            if errors:
                pytest.fail("the page had script errors:\n" + "\n".join(errors), pytrace=False)
        finally:
            await browser.close()


async def call_state(page, value: str) -> None:  # type: ignore[no-untyped-def]
    try:
        await page.wait_for_function(
            "v => window.callctl.state.call && window.callctl.state.call.state === v", arg=value,
            timeout=WAIT_MS)
    except Exception:
        state = await page.evaluate("""() => { const s = window.callctl.state; const c = s.call;
            return {call: c && {state: c.state, pc: c.pc && c.pc.connectionState,
                                ice: c.pc && c.pc.iceConnectionState, sdp: c.pc && c.pc.localDescription && c.pc.localDescription.sdp},
                    ice: s.iceServers, lastEnd: s.lastEnd, log: s.log} }""")
        raise AssertionError(f"the page never reached {value}: {state}") from None


async def hears(page, hz: float) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function(
        "hz => { const f = window.callctl.remoteDominantHz(); return f !== null && Math.abs(f - hz) < 15 }",
        arg=hz, timeout=WAIT_MS)


async def relayed(page) -> bool:  # type: ignore[no-untyped-def]
    """The page's selected candidate pair goes through the TURN relay on one side at least."""
    return bool(await page.evaluate("""async () => {
        const stats = await window.callctl.state.call.pc.getStats();
        let pair = null;
        stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
        if (!pair) return false;
        const l = stats.get(pair.localCandidateId), r = stats.get(pair.remoteCandidateId);
        return l.candidateType === "relay" || r.candidateType === "relay";
    }"""))


async def test_a_browser_behind_a_nat_calls_a_kiosk_behind_another(
        page, cli: NetCallctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "kiosk.wav"
    kiosk = await cli.kiosk("a", "kiosk", "--once", "--record", str(rec))
    await page.get_by_test_id("peer").fill("kiosk")
    await page.get_by_test_id("call-button").click()
    await call_state(page, "connected")
    connected = await kiosk.wait_event("call.connected")
    assert connected["route"]["via"] == "relay", connected
    assert await relayed(page)
    await hears(page, CALLEE_HZ)
    await kiosk.wait_event("media.level", count=6)
    await page.get_by_test_id("hangup").click()
    assert await kiosk.exit_code() == 0
    duration, fraction = tone_fraction(rec, BROWSER_HZ)
    assert duration > 2 and fraction > 0.8, (duration, fraction)


async def test_a_kiosk_behind_a_nat_calls_a_browser_behind_another(
        page, cli: NetCallctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "door.wav"
    door = await cli.dial("a", "door", "operator", "--record", str(rec), "--hangup-after", "3")
    await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
    await page.get_by_test_id("accept").click()
    await call_state(page, "connected")
    assert (await door.wait_event("call.connected"))["route"]["via"] == "relay"
    await hears(page, CALLER_HZ)
    assert await door.exit_code() == 0
    duration, fraction = tone_fraction(rec, BROWSER_HZ)
    assert duration > 2 and fraction > 0.8, (duration, fraction)


@pytest.mark.parametrize("caller", ["kiosk", "browser"])
async def test_a_cable_pull_at_the_kiosk_is_a_hiccup_on_the_page_too(
        page, net: netns.Topology, cli: NetCallctl, tmp_path: Path, caller: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    rec = tmp_path / "kiosk.wav"
    if caller == "kiosk":
        kiosk = await cli.dial("a", "door", "operator", "--record", str(rec))
        await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
        await page.get_by_test_id("accept").click()
    else:
        kiosk = await cli.kiosk("a", "kiosk", "--record", str(rec))
        await page.get_by_test_id("peer").fill("kiosk")
        await page.get_by_test_id("call-button").click()
    await call_state(page, "connected")
    await kiosk.wait_event("call.connected")
    net.link_down("a")
    try:
        await kiosk.wait_event("call.reconnecting", timeout=WAIT_MS / 1000)
        await call_state(page, "reconnecting")
        await asyncio.sleep(5.0)  # the outage itself
    finally:
        net.link_up("a")
    await kiosk.wait_event("call.reconnected", timeout=WAIT_MS / 1000)
    await call_state(page, "connected")
    await hears(page, CALLER_HZ if caller == "kiosk" else CALLEE_HZ)
    levels = len(kiosk.named("media.level"))
    await kiosk.wait_event("media.level", count=levels + 4)  # two more seconds of call
    await page.get_by_test_id("hangup").click()
    ended = await kiosk.wait_event("call.ended")
    assert ended["reason"] == "hangup", ended
    duration, _ = tone_fraction(rec, BROWSER_HZ)
    _, fraction = tone_fraction(rec, BROWSER_HZ, start_s=duration - 1.5)
    assert fraction > 0.8, (duration, fraction)  # the browser's tone again after the reconnect
