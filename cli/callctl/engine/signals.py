"""The in-call messages the two parties send each other (``POST /v1/calls/{id}/signal``).

``event_for`` turns one received signal into the call machine's event, or
None for a kind this version does not know (a newer peer's: ignored).  The
kinds, with their ``data``:

    prepare          {"sdp", "device"}   callee -> caller: the answer made while ringing
    reoffer          {"sdp", "attempt"}  caller -> callee: negotiate afresh (another device answered,
                                         or the media path broke); attempt numbers each re-offer
    reanswer         {"sdp", "attempt"}  callee -> caller: the answer to re-offer ``attempt``
    reoffer-refused  {"reason"}          callee -> caller: the reoffer was unusable; media goes on
    reconnect        {"attempt"}         callee -> caller: our media path broke, please re-offer
                                         (attempt: the last re-offer we answered)
    mute, unmute     {"audio": true}     either way
    hold, unhold     {}                  either way: no media both ways while held
    video            {"state"}           paused | resumed | enabled | disabled
"""

from __future__ import annotations

from callctl.engine import machine as m
from callctl.signaling import protocol as p


def event_for(signal: p.CallSignal) -> m.CallEvent | None:
    sdp = signal.data.get("sdp")
    kind = signal.kind
    if kind == "prepare" and isinstance(sdp, str):
        return m.Prepared(sdp, str(signal.data.get("device")))
    attempt = signal.data.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt < 2**31:
        return None  # not a number we could have sent
    if kind == "reoffer" and isinstance(sdp, str):
        return m.Reoffered(sdp, attempt)
    if kind == "reanswer" and isinstance(sdp, str):
        return m.Reanswered(sdp, attempt)
    if kind == "reconnect":
        return m.ReconnectRequested(attempt)
    if kind == "reoffer-refused":
        return m.ReofferRefused()
    if kind in ("mute", "unmute"):
        return m.PeerMuted(kind == "mute")
    if kind in ("hold", "unhold"):
        return m.PeerHeld(kind == "hold")
    state = signal.data.get("state")
    if kind == "video" and isinstance(state, str):
        return m.PeerVideo(state)
    return None
