"""Call set-up with a browser peer, against callctl <-> callctl, in one run.

Scenarios (each --runs times, medians):
  browser -> callctl   the page calls `callctl listen --auto-accept`
  callctl -> browser   `callctl call` rings the page, which answers at once
  callctl -> callctl   the same call between two callctl processes
Figures: dial -> connected (the caller's own measure) and the caller's time to
first remote audio.  Real Chromium (Debian's /usr/bin/chromium) driven by
Playwright, fake media devices; a local server; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))  # run from a checkout without installing too

from callctl.harness.child import Child, callctl_command, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess  # noqa: E402
from callctl.harness.stats import percentile  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required"]
EVENT_TIMEOUT_S = 20.0


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from playwright.async_api import async_playwright

    results: dict[str, dict[str, list[float]]] = {}

    def note(scenario: str, metric: str, value: float | None) -> None:
        if value is not None:
            results.setdefault(scenario, {}).setdefault(metric, []).append(value)

    async def caller_figures(scenario: str, caller: Child) -> None:
        """The caller's own dial -> connected, and dial -> first remote audio from its events."""
        connected = await caller.await_event("call.connected", timeout=EVENT_TIMEOUT_S)
        flowing = await caller.await_event("media.flowing", timeout=EVENT_TIMEOUT_S)
        outgoing = caller.find("call.outgoing")
        assert outgoing is not None
        note(scenario, "dial -> connected ms", connected["setup_ms"])
        note(scenario, "dial -> first remote audio ms", (flowing["ts"] - outgoing["ts"]) * 1000)

    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        server = ServerProcess(Path(tmp), ["--log-level", "warning"]).start()
        url = server.url
        env = callctl_env(XDG_RUNTIME_DIR=tmp, XDG_STATE_HOME=tmp, CALLCTL_SERVER=url,
                          CALLCTL_SECRET_FILE=str(server.secret_file))
        procs: list[Child] = []

        def start(*argv: str) -> Child:
            child = Child(callctl_command("--json", *argv), name=" ".join(argv[:3]), env=env)
            procs.append(child)
            return child

        try:
            common = ["--audio-in", "tone:440", "--audio-out", "null", "--video-out", "null"]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                context = await browser.new_context(permissions=["microphone", "camera"])
                page = await context.new_page()
                await page.goto(url + "/")
                await page.get_by_test_id("token").fill(server.token("web"))
                await page.get_by_test_id("signin-button").click()
                await page.get_by_test_id("connection").get_by_text("online").wait_for()
                # the page answers every ring at once (as a kiosk would)
                await page.evaluate("""() => new MutationObserver(() => {
                    const r = document.getElementById('ringing');
                    if (!r.hidden) document.getElementById('accept').click();
                }).observe(document.getElementById('ringing'), {attributes: true})""")
                for run in range(args.runs):
                    # browser -> callctl
                    kiosk = start("--as", "kiosk", "listen", "--auto-accept", "--once",
                                  "--device", f"k{run}", *common)
                    await kiosk.await_event("registered", timeout=EVENT_TIMEOUT_S)
                    await page.get_by_test_id("peer").fill("kiosk")
                    await page.get_by_test_id("call-button").click()
                    try:
                        await page.wait_for_function("() => { const c = window.callctl.state.call; return c && c.timeline.connected && c.timeline.firstAudio }", timeout=20000)
                    except Exception:
                        print("page:", await page.evaluate("() => ({call: window.callctl.state.call && {state: window.callctl.state.call.state, tl: window.callctl.state.call.timeline}, end: window.callctl.state.lastEnd, msg: document.getElementById('message').textContent})"), file=sys.stderr)
                        raise
                    tl = await page.evaluate("() => window.callctl.state.call.timeline")
                    if os.environ.get("BENCH_DEBUG"):
                        print({k: (v - tl["start"]) if v else v for k, v in tl.items()}, file=sys.stderr)
                    note("browser -> callctl", "dial -> connected ms", tl["connected"] - tl["start"])
                    note("browser -> callctl", "dial -> first remote audio ms", tl["firstAudio"] - tl["start"])
                    await page.get_by_test_id("hangup").click()
                    await kiosk.await_exit(EVENT_TIMEOUT_S)
                    # callctl -> browser
                    door = start("--as", "door", "call", "web", "--device", f"d{run}",
                                 "--hangup-after", "1", *common)
                    await caller_figures("callctl -> browser", door)
                    await door.await_exit(EVENT_TIMEOUT_S)
                    # callctl -> callctl
                    bob = start("--as", "bob", "listen", "--auto-accept", "--once",
                                "--device", f"b{run}", *common)
                    await bob.await_event("registered", timeout=EVENT_TIMEOUT_S)
                    alice = start("--as", "alice", "call", "bob", "--device", f"a{run}",
                                  "--hangup-after", "1", *common)
                    await caller_figures("callctl -> callctl", alice)
                    await alice.await_exit(EVENT_TIMEOUT_S)
                    await bob.await_exit(EVENT_TIMEOUT_S)
                await browser.close()
        finally:
            for p in procs:
                p.stop()
            server.stop()
    summary = {s: {m: round(percentile(v, 50) or 0.0, 1) for m, v in ms.items()} for s, ms in results.items()}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"call set-up with a browser peer, medians of {args.runs} runs ({os.cpu_count()} CPUs)")
    print(f"{'scenario':<22} {'dial -> connected':>18} {'dial -> first audio':>20}")
    for scenario, m in summary.items():
        print(f"{scenario:<22} {m['dial -> connected ms']:>15.1f} ms {m['dial -> first remote audio ms']:>17.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
