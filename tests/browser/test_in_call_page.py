"""The page's in-call controls against callctl, in real Chromium: the keypad (DTMF), the chat,
the door button and hold."""

from __future__ import annotations

from pathlib import Path

from tests.browser.conftest import open_page
from tests.browser.test_softphone import WAIT_MS, call_state
from tests.cli import Callctl
from tests.helpers import ServerProcess


async def test_a_resident_answers_the_door_on_the_page_and_opens_it(  # type: ignore[no-untyped-def]
        browser, server: ServerProcess, cli: Callctl, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    door = await cli.call("door", "resident", "--on-message", f"sh -c 'cat > {opened}'",
                          "--on-dtmf", f"sh -c 'echo $CALLCTL_DIGIT >> {tmp_path / 'digits'}'")
    page = await open_page(browser, server, server.token("resident"),
                           url=server.url + "/?door=json:%7B%22action%22%3A%22open%22%7D&door-label=Unlock")
    await page.get_by_test_id("ringing").wait_for(timeout=WAIT_MS)
    await page.get_by_test_id("accept").click()
    await call_state(page, "connected")
    await door.wait_event("call.connected")

    # the keypad: RFC 4733 telephone-events from Chromium's RTCDTMFSender
    await page.get_by_test_id("keypad-toggle").click()
    for key in "12#":
        await page.get_by_test_id("keypad").locator(f"button[data-key='{key}']").click()
        await door.wait_event("dtmf", count=len(door.named("dtmf")) + 1)
    assert [e["digit"] for e in door.named("dtmf")] == ["1", "2", "#"]

    # the chat, both ways, as text (never as HTML)
    await page.get_by_test_id("chat-input").fill("who is it? <b>bold</b>")
    await page.get_by_test_id("chat-send").click()
    message = await door.wait_event("message")
    assert (message["type"], message["body"]) == ("text", "who is it? <b>bold</b>")
    await page.locator("#chat-log li.out.delivered").wait_for(timeout=WAIT_MS)
    code, _, err = await cli.run("door", "send", "the postman 📦 <i>x</i>")
    assert code == 0, err
    await page.get_by_test_id("chat-log").get_by_text("door: the postman 📦 <i>x</i>").wait_for(timeout=WAIT_MS)
    assert await page.locator("#chat-log i").count() == 0

    # the door button sends its configured JSON; the door's hook gets it on stdin
    assert await page.get_by_test_id("door").inner_text() == "Unlock"
    await page.get_by_test_id("door").click()
    opening = await door.wait_event("message", count=2)
    assert (opening["type"], opening["body"]) == ("json", {"action": "open"})
    await page.get_by_test_id("message").get_by_text("Unlock: done").wait_for(timeout=WAIT_MS)

    # hold from the page, and from callctl
    await page.get_by_test_id("hold").click()
    await door.wait_event("peer.held")
    await page.get_by_test_id("hold").click()
    await door.wait_event("peer.unheld")
    code, _, err = await cli.run("door", "hold")
    assert code == 0, err
    await page.get_by_test_id("peer-flags").get_by_text("door put the call on hold").wait_for(timeout=WAIT_MS)
    code, _, err = await cli.run("door", "unhold")
    assert code == 0, err

    await page.get_by_test_id("hangup").click()
    assert await door.exit_code() == 0, door.stderr
    assert opened.read_text() == '{"action": "open"}'
    assert (tmp_path / "digits").read_text().split() == ["1", "2", "#"]
