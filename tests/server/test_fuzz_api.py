"""Property-based fuzzing of the HTTP API, driven by its own OpenAPI document, against a real server.

Bounded for CI (a few dozen examples per operation); ``scripts/fuzz-api`` runs
the same with many more.  Whatever the input: never a 5xx, only the statuses
the document promises, and nothing in the server's log that looks like a bug.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from callctl.server.openapi import document_json
from tests.helpers import ServerProcess, running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
EXAMPLES = int(os.environ.get("CALLCTL_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = running_server(tmp_path_factory.mktemp("fuzz"), ["--calls-per-minute", "100000"])
    yield from srv


def operations() -> list[tuple[str, GenerationMode]]:
    """Every operation of the document but the event stream (it never ends by design; it has
    its own tests in test_streams and test_hardening); invalid inputs too where it has inputs."""
    doc = json.loads(DOC.read_bytes())
    out = []
    for path, methods in doc["paths"].items():
        for method, spec in methods.items():
            if path == "/v1/events":
                continue
            out.append((f"{method.upper()} {path}", GenerationMode.POSITIVE))
            if spec.get("parameters") or spec.get("requestBody"):
                out.append((f"{method.upper()} {path}", GenerationMode.NEGATIVE))
    return out


@pytest.mark.parametrize("label,mode", operations(), ids=lambda v: str(v.value if hasattr(v, "value") else v))
def test_no_request_makes_the_server_fail(label: str, mode: GenerationMode, fuzz_server: ServerProcess) -> None:
    api = schemathesis.openapi.from_dict(json.loads(DOC.read_bytes()))  # == the served one (below)
    operation = next(op.ok() for op in api.get_all_operations() if op.ok().label == label)
    token = fuzz_server.token("alice")

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {token}"},
                               checks=[not_a_server_error, status_code_conformance], timeout=10)

    fuzz()


def test_the_fuzzed_server_logged_no_internal_error(fuzz_server: ServerProcess) -> None:
    assert "internal error" not in fuzz_server.stderr_text()
    assert httpx.get(f"{fuzz_server.url}/healthz").status_code == 200


def test_the_served_document_is_the_one_in_docs(fuzz_server: ServerProcess) -> None:
    served = httpx.get(f"{fuzz_server.url}/v1/openapi.json").content
    assert json.loads(served) == json.loads(DOC.read_bytes()), "regenerate docs/openapi.json"
    assert served == document_json()
