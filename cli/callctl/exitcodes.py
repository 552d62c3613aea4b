"""Exit codes: one table, mapped 1:1 by name from call end reasons (see docs/EXIT-CODES.md)."""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # the protocol (msgspec) is not imported for a name
if TYPE_CHECKING:
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


def for_reason(reason: EndReason) -> ExitCode:
    """The exit code of a call that ended for ``reason``: the code of the same name."""
    return ExitCode[reason.name]
