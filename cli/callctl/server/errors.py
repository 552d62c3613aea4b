"""What the server refuses: an error code and a message, never an HTTP status.

The status of each code is ``protocol.STATUS``; only the HTTP layer
(``app.py``) looks it up, so the call rules stay free of HTTP.
"""

from __future__ import annotations

from callctl.signaling import protocol as p


class Refused(Exception):
    """A request the server refuses, with a stable ``ErrorCode`` and a message for people."""

    def __init__(
        self, code: p.ErrorCode, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return p.STATUS[self.code]
