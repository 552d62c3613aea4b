"""The softphone page in every state, at desktop and phone widths: layout, not pixels.

One page goes through the states against a real server and real callctl
peers (signed out, idle, an incoming ring answered into an audio call that the
page hangs up, an outgoing video call with ringback that the kiosk hangs up);
at each state the page is checked and screenshotted (into ``tmp_path``) at
1280x800 and at 390x844.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.conftest import new_page, open_page
from tests.browser.test_softphone import WAIT_MS, call_state
from tests.cli import Callctl
from tests.helpers import ServerProcess

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# what the page lays out, measured in the page: sizes of the parts that matter,
# elements past the viewport's edges, and controls that overlap each other
LAYOUT_JS = """() => {
  const shown = (el) => !!el && el.getClientRects().length > 0 && el.getBoundingClientRect().width > 0;
  const box = (id) => { const el = document.getElementById(id);
    if (!shown(el)) return null;
    const r = el.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const name = (el) => el.id || el.dataset.testid || el.tagName.toLowerCase();
  const controls = [...document.querySelectorAll("button, input, textarea, label, meter, video")].filter(shown);
  const overlaps = [];
  for (let i = 0; i < controls.length; i++) for (let j = i + 1; j < controls.length; j++) {
    const a = controls[i], b = controls[j];
    if (a.contains(b) || b.contains(a)) continue;  // a label around its checkbox
    const p = a.getBoundingClientRect(), q = b.getBoundingClientRect();
    const dx = Math.min(p.right, q.right) - Math.max(p.left, q.left);
    const dy = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
    if (dx > 1 && dy > 1) overlaps.push(name(a) + " / " + name(b));
  }
  const outside = [...document.querySelectorAll("main *")].filter(shown)
    .filter((el) => { const r = el.getBoundingClientRect(); return r.left < -0.5 || r.right > innerWidth + 0.5; })
    .map(name);
  const disabled = (id) => { const el = document.getElementById(id); return shown(el) ? el.disabled : null; };
  return {
    innerWidth, scrollWidth: document.documentElement.scrollWidth, overlaps, outside,
    peer: box("peer"), remoteVideo: box("remote-video"), localVideo: box("local-video"),
    ringing: shown(document.getElementById("ringing")), incall: shown(document.getElementById("incall")),
    signin: shown(document.getElementById("signin")),
    callDisabled: disabled("call-button"), signoutDisabled: disabled("signout"),
    callState: document.getElementById("call-state").textContent,
    videoToggle: document.getElementById("video-toggle").textContent,
    message: document.getElementById("message").textContent, title: document.title,
  };
}"""


async def shoot(page, tmp_path: Path, state: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Screenshots of ``state`` at both widths, and each width's layout, checked for what every state needs."""
    out = {}
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(size)
        await page.wait_for_function("w => innerWidth === w", arg=size["width"])
        await page.screenshot(path=str(tmp_path / f"{state}-{label}.png"), full_page=True)
        layout = await page.evaluate(LAYOUT_JS)
        where = f"{state} at {label}: {layout}"
        assert layout["scrollWidth"] <= layout["innerWidth"], where
        assert not layout["outside"], where
        assert not layout["overlaps"], where
        if layout["peer"] is not None:
            assert layout["peer"]["w"] >= 200, where
        out[label] = layout
    await page.set_viewport_size(DESKTOP)
    return out


def hidden_videos(layout: dict[str, Any]) -> bool:
    return layout["remoteVideo"] is None and layout["localVideo"] is None


async def test_every_state_at_desktop_and_phone_widths(  # type: ignore[no-untyped-def]
        browser, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    kiosk = await cli.listen("kiosk", "--once", "--video-in", "testsrc", "--video-size", "320x240",
                             "--video-out", "null")
    # signed out: open_page signs in at once, so the signed-out shots come from a page of their own
    fresh = await new_page(browser, DESKTOP)
    try:
        await fresh.goto(server.url + "/")
        for layout in (await shoot(fresh, shots, "signed-out")).values():
            assert layout["signin"] and layout["peer"] is None, layout
    finally:
        await fresh.context.close()
    page = await open_page(browser, server, server.token("operator"), viewport=DESKTOP)

    # idle: signed in, online, Call and Sign out usable
    await page.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
    for layout in (await shoot(page, shots, "idle")).values():
        assert not layout["signin"] and not layout["incall"] and not layout["ringing"], layout
        assert layout["callDisabled"] is False and layout["signoutDisabled"] is False, layout

    # an incoming audio call rings: ring tone, title; Call and Sign out are off
    door = await cli.call("door", "operator")
    await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
    await page.wait_for_function(
        "() => { const r = window.callctl.ringtone(); return r && r.kind === 'ring' && r.running && r.level > 0.01 }",
        timeout=WAIT_MS)
    for layout in (await shoot(page, shots, "ringing")).values():
        assert layout["ringing"] and "door" in layout["title"], layout
        assert layout["callDisabled"] and layout["signoutDisabled"], layout
    await page.get_by_test_id("accept").click()
    assert await page.evaluate("() => window.callctl.ringtone()") is None  # stopped on the click
    await call_state(page, "connected")
    await door.wait_event("media.flowing")
    # in an audio call: no video boxes, the button offers to start video
    for layout in (await shoot(page, shots, "audio-call")).values():
        assert layout["incall"] and layout["callState"] == "connected", layout
        assert hidden_videos(layout), layout
        assert layout["videoToggle"] == "Start video", layout
        assert layout["callDisabled"] and layout["signoutDisabled"], layout
        assert layout["title"] == "callctl softphone", layout
    # the page hangs up: it says so, not "by door"
    await page.get_by_test_id("hangup").click()
    assert await door.exit_code() == 0
    ended = door.named("call.ended")[0]
    assert (ended["reason"], ended["source"]) == ("hangup", "remote"), ended
    await page.get_by_test_id("message").get_by_text("Call ended").wait_for(timeout=WAIT_MS)
    for layout in (await shoot(page, shots, "ended")).values():
        assert layout["message"] == "Call ended: the call was hung up", layout
        assert not layout["incall"] and layout["callDisabled"] is False and layout["signoutDisabled"] is False, layout

    # an outgoing video call: ringback while the kiosk rings
    await page.get_by_test_id("peer").fill("kiosk")
    await page.get_by_test_id("with-video").check()
    await page.get_by_test_id("call-button").click()
    await kiosk.wait_event("call.incoming")
    await call_state(page, "ringing")
    await page.wait_for_function(
        "() => { const r = window.callctl.ringtone(); return r && r.kind === 'ringback' && r.running && r.level > 0.01 }",
        timeout=WAIT_MS)
    for layout in (await shoot(page, shots, "calling")).values():
        assert layout["incall"] and layout["callState"] == "ringing", layout
        assert layout["callDisabled"] and layout["signoutDisabled"], layout
        assert layout["remoteVideo"] is None and layout["localVideo"] is not None, layout  # our camera only
    code, _, err = await cli.run("kiosk", "accept")
    assert code == 0, err
    await call_state(page, "connected")
    assert await page.evaluate("() => window.callctl.ringtone()") is None
    await page.wait_for_function(
        "() => { const v = document.getElementById('remote-video'); return !v.hidden && v.videoWidth === 320 }",
        timeout=WAIT_MS)
    # in a video call: both boxes with a size, the button pauses what is being sent
    for layout in (await shoot(page, shots, "video-call")).values():
        assert layout["remoteVideo"]["w"] > 100 and layout["remoteVideo"]["h"] > 50, layout
        assert layout["localVideo"]["w"] > 50 and layout["localVideo"]["h"] > 30, layout
        assert layout["videoToggle"] == "Pause video", layout
        assert layout["callDisabled"] and layout["signoutDisabled"], layout
    await page.get_by_test_id("video-toggle").click()
    await kiosk.wait_event("peer.video.paused")
    assert await page.get_by_test_id("video-toggle").inner_text() == "Resume video"
    assert await page.get_by_test_id("local-video").is_hidden()
    # the kiosk hangs up: now it is "by kiosk"
    code, _, err = await cli.run("kiosk", "hangup")
    assert code == 0, err
    await page.get_by_test_id("message").get_by_text("the call was hung up (by kiosk)").wait_for(timeout=WAIT_MS)
    assert await kiosk.exit_code() == 0
    assert not await page.get_by_test_id("call-button").is_disabled()
