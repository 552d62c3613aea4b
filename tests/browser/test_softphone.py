"""The softphone page against callctl, both directions, in real Chromium."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from tests.audio import tone_fraction
from tests.browser.conftest import BROWSER_HZ, ELSEWHERE, open_page
from tests.browser.figures import assert_mos_is_the_e_model_of
from tests.cli import Callctl
from tests.helpers import ServerProcess

WAIT_MS = 20_000


async def page_state(page) -> dict:  # type: ignore[no-untyped-def]
    return await page.evaluate("""() => { const s = window.callctl.state; const c = s.call;
        return {call: c && {state: c.state, answered: c.answered, mediaUp: c.mediaUp, prepared: !!c.prepared,
                            pc: c.pc && c.pc.connectionState, ice: c.pc && c.pc.iceConnectionState},
                lastEnd: s.lastEnd, log: s.log, message: document.getElementById("message").textContent} }""")


async def call_state(page, value: str) -> None:  # type: ignore[no-untyped-def]
    try:
        await page.wait_for_function(
            "v => window.callctl.state.call && window.callctl.state.call.state === v", arg=value,
            timeout=WAIT_MS)
    except Exception:
        raise AssertionError(f"page never reached {value}: {await page_state(page)}") from None


async def hears(page, hz: float) -> None:  # type: ignore[no-untyped-def]
    await page.wait_for_function(
        "hz => { const f = window.callctl.remoteDominantHz(); return f !== null && Math.abs(f - hz) < 15 }",
        arg=hz, timeout=WAIT_MS)


@pytest.mark.alone  # the browser's jitter buffer (and so its MOS) grows on a machine that lags
async def test_browser_calls_a_listening_kiosk(browser, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "kiosk.wav"
    kiosk = await cli.listen("kiosk", "--auto-accept", "--once", "--record", str(rec),
                             "--video-in", "testsrc", "--video-size", "320x240", "--video-out", "null")
    page = await open_page(browser, server, server.token("operator"))
    await page.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
    assert await page.get_by_test_id("identity").inner_text() == "operator"
    await page.get_by_test_id("peer").fill("kiosk")
    await page.get_by_test_id("with-video").check()
    await page.get_by_test_id("call-button").click()
    await call_state(page, "connected")
    await kiosk.wait_event("call.connected")
    # the browser hears the kiosk's 660 Hz tone, and sees its 320x240 video
    await hears(page, 660)
    await page.wait_for_function(
        "async () => { const s = await window.callctl.stats(); return s && s.in_video && s.in_video.frames > 10 && s.in_video.width === 320 }",
        timeout=WAIT_MS)
    # the call's figures on the page, as callctl's media.stats gives them: a loopback call is clean
    await page.get_by_test_id("call-stats").get_by_text("MOS").wait_for(timeout=WAIT_MS)
    figures = await page.evaluate("window.callctl.callStats()")
    assert figures["loss_in_pct"] == 0 and figures["packets_received"] > 100, figures
    assert 0 <= figures["rtt_ms"] < 100, figures
    assert_mos_is_the_e_model_of(figures)
    assert 20 < figures["kbps_in"] < 60, figures  # the kiosk's Opus at ~32 kbit/s
    line = await page.get_by_test_id("call-stats").inner_text()
    assert line.startswith("rtt ") and "loss 0.0 in" in line and "kbps" in line, line
    # callctl sees the browser's camera
    flowing = await kiosk.wait_event("video.flowing")
    assert flowing["width"] > 0 and flowing["height"] > 0
    # the browser mutes: the kiosk is told
    await page.get_by_test_id("mute").click()
    await kiosk.wait_event("peer.muted")
    await page.get_by_test_id("mute").click()
    await kiosk.wait_event("peer.unmuted")
    await kiosk.wait_event("media.level", count=6)  # 3 s of call for the recording
    await page.get_by_test_id("hangup").click()
    assert await kiosk.exit_code() == 0, (kiosk.events[-3:], await page_state(page))
    ended = kiosk.named("call.ended")[0]
    assert (ended["reason"], ended["source"]) == ("hangup", "remote")
    # the kiosk recorded the browser's microphone tone
    duration, fraction = tone_fraction(rec, BROWSER_HZ)
    assert duration > 2 and fraction > 0.5, (duration, fraction)  # mute took a moment out of it
    # the page hung up itself (the server's call.ended to it comes before its POST returns)
    await page.get_by_test_id("message").get_by_text("Call ended").wait_for(timeout=WAIT_MS)
    assert await page.get_by_test_id("message").inner_text() == "Call ended: the call was hung up"


async def test_callctl_calls_a_browser_that_answers(browser, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "caller.wav"
    page = await open_page(browser, server, server.token("reception"))
    await page.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
    door = await cli.call("door", "reception", "--video", "--video-in", "testsrc", "--video-size", "320x240",
                          "--video-out", "null", "--record", str(rec))
    await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
    assert "door" in await page.get_by_test_id("ringing").inner_text()
    started = time.monotonic()
    await page.get_by_test_id("accept").click()
    await door.wait_event("call.connected")
    await call_state(page, "connected")
    await hears(page, 440)
    await door.wait_event("media.flowing")
    assert time.monotonic() - started < 15
    # callctl pauses its video: the page shows it
    code, _, err = await cli.run("door", "video", "pause")
    assert code == 0, err
    await page.get_by_test_id("peer-flags").get_by_text("paused").wait_for(timeout=WAIT_MS)
    # the browser pauses its video: callctl is told
    await page.get_by_test_id("video-toggle").click()
    await door.wait_event("peer.video.paused")
    await door.wait_event("media.level", count=6)
    code, _, err = await cli.run("door", "hangup")
    assert code == 0, err
    assert await door.exit_code() == 0
    await page.get_by_test_id("message").get_by_text("the call was hung up (by door)").wait_for(timeout=WAIT_MS)
    duration, fraction = tone_fraction(rec, BROWSER_HZ)
    assert duration > 2 and fraction > 0.8, (duration, fraction)


async def ringtone(page) -> dict | None:  # type: ignore[no-untyped-def]
    return await page.evaluate("() => window.callctl.ringtone()")


async def test_browser_rings_declines_and_the_caller_exits_3(browser, server: ServerProcess, cli: Callctl) -> None:  # type: ignore[no-untyped-def]
    page = await open_page(browser, server, server.token("reception"),
                           permissions=("microphone", "camera", "notifications"))
    await page.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
    title = await page.title()
    door = await cli.call("door", "reception")
    await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
    # it rings: a tone out of the page's AudioContext, the title, a notification
    await page.wait_for_function(
        "() => { const r = window.callctl.ringtone(); return r && r.running && r.level > 0.01 }", timeout=WAIT_MS)
    ring = await ringtone(page)
    assert ring is not None and (ring["kind"], ring["peer"], ring["notified"]) == ("ring", "door", True), ring
    assert await page.title() == "Ringing: door — callctl"
    await page.get_by_test_id("decline").click()
    assert await ringtone(page) is None  # silent at once
    assert await page.title() == title
    assert await door.exit_code() == 3


async def test_plain_http_from_elsewhere_says_why_there_is_no_microphone(  # type: ignore[no-untyped-def]
        browser, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:
    # as a phone on the LAN opening http://SERVER:PORT/: not a secure context
    page = await open_page(browser, server, server.token("reception"),
                           url=server.url.replace("127.0.0.1", ELSEWHERE) + "/")
    assert not await page.evaluate("() => window.isSecureContext")
    notice = page.get_by_test_id("insecure")
    await notice.wait_for(timeout=WAIT_MS)
    text = await notice.inner_text()
    assert "microphone" in text and "callctl server --tls self-signed" in text and "localhost" in text, text
    await page.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
    assert await page.get_by_test_id("call-button").is_disabled()
    await page.set_viewport_size({"width": 390, "height": 844})  # the message fits a phone
    await page.wait_for_function("() => innerWidth === 390")
    await page.screenshot(path=str(tmp_path / "insecure-phone.png"), full_page=True)
    assert await page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
    # a call still rings here and can be declined, but not accepted
    door = await cli.call("door", "reception")
    await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
    assert await page.get_by_test_id("accept").is_disabled()
    await page.get_by_test_id("decline").click()
    assert await door.exit_code() == 3


@pytest.mark.parametrize("kind", ["forged", "expired"])
async def test_a_bad_token_is_refused_on_the_page(browser, server: ServerProcess, kind: str) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    claims = {"sub": "mallory", "svc": "default", "iat": now - 7200, "exp": now - 3600}
    token = (jwt.encode({**claims, "exp": now + 3600}, b"k" * 64, "HS256") if kind == "forged"
             else server.token("mallory", ttl=1) if False else jwt.encode(claims, server.secret_file.read_bytes().strip(), "HS256"))
    page = await open_page(browser, server, token)
    message = page.get_by_test_id("message")
    await message.get_by_text("Sign-in refused").wait_for(timeout=WAIT_MS)
    assert ("expired" in await message.inner_text()) == (kind == "expired")
    assert await page.get_by_test_id("signin").is_visible()
