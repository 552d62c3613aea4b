"""The page over ``--tls self-signed`` on a name other than localhost: a secure context, a real call.

Chromium resolves ``callctl.test`` to loopback (``--host-resolver-rules``) and
trusts the server's own certificate by its public key
(``--ignore-certificate-errors-spki-list``), as a user does by accepting the
certificate once after checking its fingerprint; without that it refuses it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.audio import tone_fraction
from tests.browser.conftest import BROWSER_HZ, CHROMIUM, playwright_api
from tests.browser.test_softphone import WAIT_MS, call_state, hears, page_state
from tests.cli import Callctl
from tests.helpers import ServerProcess, running_server

NAME = "callctl.test"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path, ["--tls", "self-signed", "--tls-name", NAME, "--ring-timeout", "30",
                                         "--heartbeat", "2", "--offline-grace", "5"])


def cert_file(server: ServerProcess) -> Path:
    return server.workdir / "server-cert.pem"  # next to the secret file


def spki_pin(path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)), computed here from the file the server made."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def chromium(*extra: str) -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def trusting_browser(tls_server: ServerProcess, tone_wav: Path, tmp_path: Path) -> AsyncIterator[object]:
    async for b in chromium(f"--use-file-for-fake-audio-capture={tone_wav}",
                            f"--ignore-certificate-errors-spki-list={spki_pin(cert_file(tls_server))}"):
        yield b


@pytest.fixture
async def plain_browser(tmp_path: Path) -> AsyncIterator[object]:
    async for b in chromium():
        yield b


@pytest.fixture
async def trusting_cli(tls_server: ServerProcess, tmp_path: Path) -> AsyncIterator[Callctl]:
    runner = Callctl(tls_server, tmp_path)
    runner.env["SSL_CERT_FILE"] = str(cert_file(tls_server))
    yield runner
    await runner.close()


async def test_the_page_on_a_lan_name_is_secure_and_calls_a_kiosk(  # type: ignore[no-untyped-def]
        trusting_browser, tls_server: ServerProcess, trusting_cli: Callctl, tmp_path: Path) -> None:
    rec = tmp_path / "kiosk.wav"
    kiosk = await trusting_cli.listen("kiosk", "--auto-accept", "--once", "--record", str(rec))
    context = await trusting_browser.new_context(permissions=["microphone"])
    try:
        page = await context.new_page()
        page.on("console", lambda m: print("page:", m.text))
        await page.goto(f"https://{NAME}:{tls_server.port}/")
        assert await page.evaluate("() => window.isSecureContext") is True
        assert await page.evaluate("() => location.origin") == f"https://{NAME}:{tls_server.port}"
        await page.get_by_test_id("token").fill(tls_server.token("operator"))
        await page.get_by_test_id("signin-button").click()
        await page.get_by_test_id("connection").get_by_text("online").wait_for(timeout=WAIT_MS)
        await page.get_by_test_id("peer").fill("kiosk")
        await page.get_by_test_id("call-button").click()
        await call_state(page, "connected")
        await kiosk.wait_event("call.connected")
        await hears(page, 660)  # the kiosk's tone reaches the browser
        await kiosk.wait_event("media.level", count=10)  # 5 s of call for the recording
        await page.get_by_test_id("hangup").click()
        assert await kiosk.exit_code() == 0, (kiosk.events[-3:], await page_state(page))
        # the browser's microphone (its fake 523 Hz) reached the kiosk: getUserMedia worked.
        # Seconds of tone, not a share of the file: a loaded machine starts the track late.
        duration, fraction = tone_fraction(rec, BROWSER_HZ)
        assert duration * fraction >= 2.5, (duration, fraction)
    finally:
        await context.close()


async def test_a_browser_that_does_not_trust_it_refuses_the_page(  # type: ignore[no-untyped-def]
        plain_browser, tls_server: ServerProcess) -> None:
    context = await plain_browser.new_context()
    try:
        page = await context.new_page()
        with pytest.raises(playwright_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
            await page.goto(f"https://{NAME}:{tls_server.port}/")
    finally:
        await context.close()
