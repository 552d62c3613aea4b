"""``callctl call PEER`` beside a running ``listen``, before the command tree is loaded.

A kiosk's button runs ``callctl call reception``; the call should be dialing
before the finger is off the button.  Typer and the command tree take
100–200 ms to import (more on a small board), so this module reads the usual
command lines of ``call`` by itself — the global options, PEER, and the
options a call through a listen carries — finds the running listen of this
identity and sends it the ``dial``, with nothing but the standard library's
basics imported.  Whatever it does not fully understand (another option, a
value Typer would refuse, ``--help``, ``--standalone``, no running listen,
several of them) goes the normal way, through Typer, which then gives the
same result, or the usage error, more slowly.

The tables here mirror the ``call`` command's options; tests/test_quick.py
keeps them equal.
"""

from __future__ import annotations

import math
import os

TYPE_CHECKING = False  # typing itself is not imported: these modules run before anything else
if TYPE_CHECKING:
    from typing import Any

#: ExitCode.INTERRUPTED (callctl.exitcodes imports the protocol: too slow for here).
INTERRUPTED = 130

#: Global options that take a value: option → (Settings field, environment variable).
GLOBAL_VALUES = {
    "--server": ("server", "CALLCTL_SERVER"), "--as": ("user", "CALLCTL_USER"),
    "--device": ("device", "CALLCTL_DEVICE"), "--service": ("service", "CALLCTL_SERVICE"),
    "--token": ("token", "CALLCTL_TOKEN"), "--config": ("config", "CALLCTL_CONFIG"),
    "--ca-file": ("ca_file", "CALLCTL_CA_FILE"), "--token-file": ("token_file", "CALLCTL_TOKEN_FILE"),
    "--log-level": ("log_level", "CALLCTL_LOG"),
}
GLOBAL_FLAGS = {"--json": ("json", "CALLCTL_JSON")}

#: ``call``'s options read here: option → (parameter, kind, environment variable, min, max).
CALL_OPTIONS: dict[str, tuple[str, str, str | None, float | None, float | None]] = {
    "--audio-in": ("audio_in", "str", "CALLCTL_AUDIO_IN", None, None),
    "--audio-out": ("audio_out", "str", "CALLCTL_AUDIO_OUT", None, None),
    "--loop": ("loop", "flag", None, None, None),
    "--ring-timeout": ("ring_timeout", "float", None, 1, 3600),
    "--hangup-after": ("hangup_after", "float", None, 0.1, None),
    "--max-duration": ("max_duration", "float", None, 0.1, None),
    "--ringback": ("ringback", "str", "CALLCTL_RINGBACK", None, None),
    "--hold-audio": ("hold_audio", "str", "CALLCTL_HOLD_AUDIO", None, None),
    "--on-ring": ("on_ring", "str", None, None, None),
    "--on-connect": ("on_connect", "str", None, None, None),
    "--on-end": ("on_end", "str", None, None, None),
    "--on-dtmf": ("on_dtmf", "str", None, None, None),
    "--on-message": ("on_message", "str", None, None, None),
    "--record": ("record", "str", None, None, None),
    "--device": ("device", "str", "CALLCTL_DEVICE", None, None),
    "--bitrate": ("bitrate", "int", "CALLCTL_BITRATE", 6, 510),
    "--video": ("video", "flag", None, None, None),
    "--video-in": ("video_in", "str", "CALLCTL_VIDEO_IN", None, None),
    "--video-paused": ("video_paused", "flag", None, None, None),
}
#: The rest of ``call``'s options: a command line with one of them goes through Typer.
OTHER_CALL_OPTIONS = frozenset({
    "video_out", "video_size", "fps", "camera_format", "ice_server", "ice_username", "ice_credential",
    "relay_only", "reconnect_timeout", "connect_timeout", "standalone", "aec", "noise_suppression", "agc",
    "video_codec",
})
#: What a call through a listen carries to it (the rest of CALL_OPTIONS is this process's own).
FORWARDED = frozenset(spec[0] for spec in CALL_OPTIONS.values()) - {"on_ring", "on_connect", "on_end", "on_dtmf",
                                                                   "on_message", "device"}
#: Their environment variables: when one is set, Typer reads (and checks) it.
OTHER_CALL_ENV = ("CALLCTL_VIDEO_OUT", "CALLCTL_ICE_SERVER", "CALLCTL_ICE_USERNAME", "CALLCTL_ICE_CREDENTIAL",
                  "CALLCTL_RELAY_ONLY", "CALLCTL_RECONNECT_TIMEOUT", "CALLCTL_CONNECT_TIMEOUT",
                  "CALLCTL_AEC", "CALLCTL_NOISE_SUPPRESSION", "CALLCTL_AGC", "CALLCTL_VIDEO_CODEC")
#: The commands a config file's ``[command.NAME]`` tables may name.
COMMANDS = frozenset({"server", "call", "listen", "demo", "devices", "preview", "accept", "decline", "hangup",
                      "mute", "unmute", "hold", "unhold", "video", "dtmf", "send", "snapshot", "switch",
                      "status", "events", "token", "service", "config"})

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class _NotHere(Exception):
    """This command line is not one for the quick path (Typer takes it)."""


def quick_call(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a call through a running listen: its exit code; None otherwise."""
    try:
        parsed = _parse(argv)
        if parsed is None:
            return None
        given, peer, params = parsed
        return _call(given, peer, params)
    except _NotHere:
        return None
    except KeyboardInterrupt:
        return INTERRUPTED


def _parse(argv: list[str]) -> tuple[dict[str, Any], str, dict[str, Any]] | None:
    """(global settings, peer, call parameters given) of ``callctl [GLOBAL...] call PEER [OPTIONS...]``."""
    given: dict[str, Any] = {}
    i = 0
    while i < len(argv) and argv[i] != "call":
        name, eq, value = argv[i].partition("=")
        if name in GLOBAL_VALUES:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value = argv[i + 1]
                i += 1
            given[GLOBAL_VALUES[name][0]] = _nonempty(value)
        elif argv[i] in GLOBAL_FLAGS:
            given[GLOBAL_FLAGS[argv[i]][0]] = True
        else:
            return None
        i += 1
    if i >= len(argv):
        return None
    rest, peers, params = argv[i + 1:], [], {}
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            peers.extend(rest[j + 1:])
            break
        if not arg.startswith("-") or arg == "-":
            peers.append(arg)
            j += 1
            continue
        name, eq, value = arg.partition("=")
        spec = CALL_OPTIONS.get(name)
        if spec is None:
            return None
        param, kind = spec[0], spec[1]
        if kind == "flag":
            if eq:
                return None
            params[param] = True
        else:
            if not eq:
                if j + 1 >= len(rest):
                    return None
                value = rest[j + 1]
                j += 1
            params[param] = _value(spec, value)
        j += 1
    if len(peers) != 1:
        return None
    return given, peers[0], params


def _nonempty(value: str) -> str:
    if not value:
        raise _NotHere
    return value


def _value(spec: tuple[str, str, str | None, float | None, float | None], raw: Any) -> Any:
    """A value as Typer would convert it (``raw``: a string, or a config file's value), or _NotHere."""
    _, kind, _, low, high = spec
    if kind == "flag":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise _NotHere
    if kind == "str":
        if isinstance(raw, str):
            return raw
        raise _NotHere
    if isinstance(raw, bool):
        raise _NotHere
    try:
        number: float = int(raw) if kind == "int" else float(raw)
    except (TypeError, ValueError):
        raise _NotHere from None
    if kind == "int" and isinstance(raw, float):
        raise _NotHere
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        raise _NotHere
    return number


def _call(given: dict[str, Any], peer: str, params: dict[str, Any]) -> int | None:
    from pathlib import Path

    from callctl.config import ConfigError, own_user, resolve

    for field, var in (*GLOBAL_VALUES.values(), *GLOBAL_FLAGS.values()):
        env = os.environ.get(var)
        if field not in given and env:
            given[field] = _value(("", "flag" if var == "CALLCTL_JSON" else "str", None, None, None), env)
    if any(os.environ.get(var) for var in OTHER_CALL_ENV):
        return None
    for spec in CALL_OPTIONS.values():
        env = os.environ.get(spec[2]) if spec[2] else None
        if env and spec[0] not in params:
            params[spec[0]] = _value(spec, env)
    def file(key: str) -> Path | None:
        return Path(given[key]) if given.get(key) else None

    try:
        settings = resolve(server=given.get("server"), user=given.get("user"), service=given.get("service"),
                           token=given.get("token"), json=bool(given.get("json")), device=given.get("device"),
                           log_level=given.get("log_level"), config=file("config"), ca_file=file("ca_file"),
                           token_file=file("token_file"), check_ca=False)
    except ConfigError:
        return None
    _file_defaults(settings.extra.get("command"), params)

    from callctl.commands import _via_listen
    from callctl.engine.sockets import ControlError

    try:
        path = _via_listen.find_listener(own_user(settings), params.get("device") or settings.device)
    except ControlError:
        return None
    if path is None:
        return None
    hooks = {"ringback": params.get("on_ring"), "connect": params.get("on_connect"), "end": params.get("on_end"),
             "dtmf": params.get("on_dtmf"), "message": params.get("on_message")}
    if any(hooks.values()):
        from callctl.commands._hooks import HookError, check

        try:
            check(hooks)
        except HookError:
            return None  # Typer's way says it in one line
    opts = {name: _via_listen.absolute(name, value) for name, value in params.items()
            if name not in _via_listen.LOCAL_OPTIONS}
    sock = _via_listen.dial(path, peer, opts)
    if sock is None:
        return None
    return _via_listen.follow(sock, path, settings.json, hooks)


def _file_defaults(tables: Any, params: dict[str, Any]) -> None:
    """The config file's ``[command.call]`` values under the command line's (as Typer's default map)."""
    if tables is None:
        return
    if not isinstance(tables, dict) or not all(isinstance(t, dict) and n in COMMANDS for n, t in tables.items()):
        raise _NotHere
    by_param = {spec[0]: spec for spec in CALL_OPTIONS.values()}
    for key, raw in tables.get("call", {}).items():
        param = str(key).replace("-", "_")
        spec = by_param.get(param)
        if spec is None:
            if param in OTHER_CALL_OPTIONS and param != "standalone":
                continue  # the listener's own (a standalone call's default)
            raise _NotHere
        if param not in params:
            params[param] = _value(spec, raw)
