"""The HTTP API as an OpenAPI 3.1 document, built from the protocol's own structs.

Served at ``GET /v1/openapi.json`` and checked into ``docs/openapi.json``
(a test keeps the two equal).  Schemas come from ``signaling/protocol.py``
through msgspec, so the document cannot drift from what the server decodes;
the paths and their error statuses are written here, once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from callctl import __version__
from callctl.signaling import protocol as p

_REF = "#/components/schemas/{name}"
_BODIES = [p.CreateCall, p.AnswerCall, p.DeclineCall, p.HangupCall, p.SignalCall, p.CreateTicket]
_ANSWERS = [p.CallInfo, p.StreamTicket, p.Health, p.Error, p.IceServers]


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=kind.__name__)}


def _json(kind: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(kind)}}}


def _errors(*codes: p.ErrorCode) -> dict[str, Any]:
    by_status: dict[str, list[str]] = {}
    for code in codes:
        by_status.setdefault(str(p.STATUS[code]), []).append(code.value)
    out = {status: _json(p.Error, "error: " + ", ".join(names)) for status, names in by_status.items()}
    # any request, before it reaches the app (server/guard.py)
    out["408"] = _json(p.Error, "malformed: the request headers did not arrive in time")
    out["431"] = _json(p.Error, "too_large: request headers over 16 KiB or 64 headers")
    return out


E = p.ErrorCode
_AUTH = (E.UNAUTHORIZED, E.RATE_LIMITED)
_BODY = (E.MALFORMED, E.INVALID, E.TOO_LARGE)
_CALL = (*_AUTH, *_BODY, E.NOT_FOUND, E.FORBIDDEN, E.CALL_ENDED, E.ALREADY_ANSWERED, E.WRONG_STATE)
_DEVICE = {"name": p.DEVICE_HEADER, "in": "header", "required": False,
           "schema": {"type": "string", "pattern": p.ID_PATTERN},
           "description": "the sending device (default: `default`)"}
_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _action(body: type, summary: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "parameters": [_CALL_ID, _DEVICE],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {"200": _json(p.CallInfo, "the call"), **_errors(*_CALL)},
    }}


def document() -> dict[str, Any]:
    """The whole OpenAPI document (JSON-ready)."""
    _, schemas = msgspec.json.schema_components(_BODIES + _ANSWERS, ref_template=_REF)
    return _ecma({
        "openapi": "3.1.0",
        "info": {"title": "callctl signaling", "version": __version__,
                 "description": "Presence, ringing and call set-up for callctl (docs/API.md)."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "liveness and counts", "security": [],
                                 "responses": {"200": _json(p.Health, "the server is up"), **_errors()}}},
            "/metrics": {"get": {"summary": "this node's metrics, Prometheus text format (docs/API.md)",
                                 "security": [],
                                 "responses": {"200": {"description": "the metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}},
                                               **_errors()}}},
            "/v1/openapi.json": {"get": {"summary": "this document", "security": [],
                                         "responses": {"200": {"description": "OpenAPI 3.1"}, **_errors()}}},
            "/v1/events": {"get": {
                "summary": "this device's event stream (Server-Sent Events); the device is online while it is open",
                "parameters": [
                    {"name": "device", "in": "query", "schema": {"type": "string", "pattern": p.ID_PATTERN}},
                    {"name": "ticket", "in": "query", "schema": {"type": "string"},
                     "description": "a stream ticket, for clients that cannot send headers"},
                    {"name": "allow", "in": "query", "schema": {"type": "string"},
                     "description": "comma-separated user ids: the only callers this device rings for"},
                    {"name": "last_event_id", "in": "query",
                     "schema": {"type": "string", "pattern": p.EVENT_ID_RE.pattern}},
                    {"name": "Last-Event-ID", "in": "header",
                     "schema": {"type": "string", "pattern": p.EVENT_ID_RE.pattern}},
                ],
                "responses": {"200": {"description": "text/event-stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_errors(*_AUTH, E.MALFORMED, E.INVALID, E.TOO_MANY_DEVICES, E.UNAVAILABLE)},
            }},
            "/v1/stream-tickets": {"post": {
                "summary": "a single-use, 30 s ticket for GET /v1/events",
                "requestBody": {"required": False,
                                "content": {"application/json": {"schema": _ref(p.CreateTicket)}}},
                "responses": {"201": _json(p.StreamTicket, "the ticket"), **_errors(*_AUTH, *_BODY)},
            }},
            "/v1/ice-servers": {"get": {
                "summary": "this user's STUN/TURN servers, TURN credentials issued now (docs/NETWORK.md)",
                "responses": {"200": _json(p.IceServers, "the servers"), **_errors(*_AUTH)},
            }},
            "/v1/calls": {"post": {
                "summary": "ring a user",
                "parameters": [_DEVICE],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(p.CreateCall)}}},
                "responses": {"201": _json(p.CallInfo, "the call, ringing (or ended at once: busy)"),
                              **_errors(*_AUTH, *_BODY, E.WRONG_STATE)},
            }},
            "/v1/calls/{call_id}": {"get": {
                "summary": "a call, to its two parties",
                "parameters": [_CALL_ID],
                "responses": {"200": _json(p.CallInfo, "the call"),
                              **_errors(*_AUTH, E.NOT_FOUND, E.FORBIDDEN)},
            }},
            "/v1/calls/{call_id}/answer": _action(p.AnswerCall, "answer a ringing call (the callee)"),
            "/v1/calls/{call_id}/decline": _action(p.DeclineCall, "decline a ringing call (the callee)"),
            "/v1/calls/{call_id}/hangup": _action(p.HangupCall, "end or cancel a call (either party)"),
            "/v1/calls/{call_id}/signal": _action(p.SignalCall, "an in-call message to the other party"),
        },
    })


def _ecma(node: Any) -> Any:
    """Python's ``\\Z`` as JSON Schema's ``$`` (ECMA ``$`` never matches before a final newline)."""
    if isinstance(node, dict):
        return {k: (v.replace("\\Z", "$") if k == "pattern" and isinstance(v, str) else _ecma(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def document_json() -> bytes:
    return msgspec.json.format(msgspec.json.encode(document()), indent=2) + b"\n"
