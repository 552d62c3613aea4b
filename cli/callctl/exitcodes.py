"""Exit codes: one table, mapped 1:1 from call end reasons (see docs/EXIT-CODES.md)."""

from __future__ import annotations

import enum

from callctl.signaling.protocol import EndReason


class ExitCode(enum.IntEnum):
    HANGUP = 0
    INTERNAL_ERROR = 1
    USAGE = 2
    DECLINED = 3
    BUSY = 4
    NO_ANSWER = 5
    UNAVAILABLE = 6
    CANCELLED = 7
    ANSWERED_ELSEWHERE = 8
    NETWORK_LOST = 9
    SERVER_UNREACHABLE = 10
    AUTH_FAILED = 11
    DEVICE_ERROR = 12
    MAX_DURATION = 13
    BAD_SDP = 14
    INTERRUPTED = 130
    #: A clean stop that is not a call's end (``listen`` stopped by SIGTERM): the same 0.
    OK = 0


_BY_REASON = {
    EndReason.HANGUP: ExitCode.HANGUP,
    EndReason.INTERNAL_ERROR: ExitCode.INTERNAL_ERROR,
    EndReason.DECLINED: ExitCode.DECLINED,
    EndReason.BUSY: ExitCode.BUSY,
    EndReason.NO_ANSWER: ExitCode.NO_ANSWER,
    EndReason.UNAVAILABLE: ExitCode.UNAVAILABLE,
    EndReason.CANCELLED: ExitCode.CANCELLED,
    EndReason.ANSWERED_ELSEWHERE: ExitCode.ANSWERED_ELSEWHERE,
    EndReason.NETWORK_LOST: ExitCode.NETWORK_LOST,
    EndReason.SERVER_UNREACHABLE: ExitCode.SERVER_UNREACHABLE,
    EndReason.AUTH_FAILED: ExitCode.AUTH_FAILED,
    EndReason.DEVICE_ERROR: ExitCode.DEVICE_ERROR,
    EndReason.MAX_DURATION: ExitCode.MAX_DURATION,
    EndReason.BAD_SDP: ExitCode.BAD_SDP,
}
assert set(_BY_REASON) == set(EndReason), "every end reason needs an exit code"


def for_reason(reason: EndReason) -> ExitCode:
    return _BY_REASON[reason]
