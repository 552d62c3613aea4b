"""Every way a call ends has its exit code, and docs/EXIT-CODES.md lists them all."""

from __future__ import annotations

import re
from pathlib import Path

from callctl.exitcodes import for_reason
from callctl.signaling.protocol import EndReason

DOC = Path(__file__).resolve().parent.parent / "docs" / "EXIT-CODES.md"


def test_every_end_reason_has_the_exit_code_of_its_name() -> None:
    codes = {reason: for_reason(reason) for reason in EndReason}
    assert codes[EndReason.HANGUP] == 0 and codes[EndReason.DECLINED] == 3
    assert codes[EndReason.SERVER_UNREACHABLE] == 10
    assert len(set(codes.values())) == len(codes), "two reasons share a code"


def test_the_documented_codes_are_the_codes() -> None:
    text = DOC.read_text()
    for reason in EndReason:
        code = int(for_reason(reason))
        assert re.search(rf"\|\s*`?{code}`?\s*\|.*{reason.value}", text), (code, reason.value)
