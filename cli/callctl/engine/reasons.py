"""The one mapping from something that raised to the end reason of the call it ends.

Everything else the machine decides from its events (``machine.py``); this
is for requests and devices that fail with an exception.
"""

from __future__ import annotations

from callctl.media.errors import BadSdp, DeviceError
from callctl.signaling.client import AuthFailed, Forbidden, RequestRejected, SignalingError
from callctl.signaling.protocol import EndReason


def reason_for(error: BaseException) -> EndReason:
    """``auth_failed`` for a refused identity, ``internal_error`` for a request we got wrong."""
    if isinstance(error, AuthFailed | Forbidden):
        return EndReason.AUTH_FAILED
    if isinstance(error, RequestRejected):
        return EndReason.INTERNAL_ERROR  # 400/413/422: our own request was malformed, a bug
    if isinstance(error, SignalingError | TimeoutError | OSError):
        return EndReason.SERVER_UNREACHABLE
    if isinstance(error, DeviceError):
        return EndReason.DEVICE_ERROR
    if isinstance(error, BadSdp):
        return EndReason.BAD_SDP
    return EndReason.INTERNAL_ERROR
