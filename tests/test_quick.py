"""The quick path of ``callctl call`` reads the command lines Typer reads, the same way.

Its tables mirror the ``call`` command and the global options; when Typer's
side changes, these tests say which table to change.  What it does with a
running listen is tested with real processes in tests/e2e/test_service.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main

from callctl.app import app
from callctl.commands import _quick
from callctl.commands._via_listen import LOCAL_OPTIONS
from callctl.engine.commands import DIAL_OPTIONS

ROOT = typer.main.get_command(app)


def _options(command: Any) -> dict[str, Any]:
    return {param.name: param for param in command.params if param.param_type_name == "option"}


def test_the_global_option_tables_are_the_apps() -> None:
    ours = {**_quick.GLOBAL_VALUES, **_quick.GLOBAL_FLAGS}
    theirs = {name: param for name, param in _options(ROOT).items() if name != "version"}
    assert len(ours) == len(theirs)
    for opt, (field, env) in ours.items():
        param = theirs[field]
        assert (opt in param.opts, param.envvar, param.is_flag) == (True, env, opt in _quick.GLOBAL_FLAGS), opt


def test_the_call_option_tables_cover_every_option_of_call() -> None:
    call = ROOT.commands["call"]  # type: ignore[attr-defined]
    options = _options(call)
    quick = {spec[0]: (opt, spec) for opt, spec in _quick.CALL_OPTIONS.items()}
    assert set(quick) | _quick.OTHER_CALL_OPTIONS == set(options)
    assert not set(quick) & _quick.OTHER_CALL_OPTIONS
    for name, (opt, (_, kind, env, low, high)) in quick.items():
        param = options[name]
        assert opt in param.opts, name
        assert param.envvar == env, name
        assert param.is_flag == (kind == "flag"), name
        info = param.type_descriptor.parameter_info
        assert (info.min, info.max) == (low, high), name
        annotation = param.type_descriptor.annotation
        assert {int: "int", float: "float", bool: "flag", str: "str", Path: "str"}[annotation] == kind, name
    others = {options[name].envvar for name in _quick.OTHER_CALL_OPTIONS if options[name].envvar}
    assert others == set(_quick.OTHER_CALL_ENV)


def test_what_is_forwarded_is_what_a_listen_takes() -> None:
    assert set(DIAL_OPTIONS) == _quick.FORWARDED
    assert set(_quick.CALL_OPTIONS[o][0] for o in _quick.CALL_OPTIONS) - _quick.FORWARDED <= LOCAL_OPTIONS


def test_the_command_names_are_the_apps() -> None:
    assert set(ROOT.commands) == _quick.COMMANDS  # type: ignore[attr-defined]


@pytest.mark.parametrize("argv, expected", [
    (["call", "bob"], ({}, "bob", {})),
    (["--json", "--as", "kiosk", "--server=http://h:1", "call", "--video", "bob", "--ring-timeout", "20",
      "--bitrate=24", "--on-end", "echo $CALLCTL_REASON"],
     ({"json": True, "user": "kiosk", "server": "http://h:1"}, "bob",
      {"video": True, "ring_timeout": 20.0, "bitrate": 24, "on_end": "echo $CALLCTL_REASON"})),
    (["call", "--audio-in", "--loop", "--", "-bob"], ({}, "-bob", {"audio_in": "--loop"})),
])
def test_a_command_line_it_reads(argv: list[str], expected: tuple[Any, ...]) -> None:
    assert _quick._parse(argv) == expected


@pytest.mark.parametrize("argv", [
    [], ["listen"], ["--version", "call", "bob"], ["call"], ["call", "bob", "carol"],
    ["call", "bob", "--help"], ["call", "bob", "-h"], ["call", "bob", "--standalone"],
    ["call", "bob", "--ice-server", "stun:h"], ["call", "bob", "--ring-timeout"],
    ["call", "bob", "--loop=yes"], ["--as", "", "call", "bob"], ["--server"],
])
def test_a_command_line_it_leaves_to_typer(argv: list[str]) -> None:
    try:
        parsed = _quick._parse(argv)
    except _quick._NotHere:
        parsed = None
    assert parsed is None


@pytest.mark.parametrize("option, value", [
    ("--ring-timeout", "0.5"), ("--ring-timeout", "5000"), ("--ring-timeout", "soon"), ("--bitrate", "5"),
    ("--bitrate", "32.5"), ("--hangup-after", "nan"), ("--max-duration", "inf"), ("--bitrate", "511"),
])
def test_a_value_typer_would_refuse_goes_to_typer(option: str, value: str) -> None:
    with pytest.raises(_quick._NotHere):
        _quick._parse(["call", "bob", option, value])
    assert _quick.quick_call(["call", "bob", option, value]) is None


def test_config_file_defaults_fill_what_the_command_line_left() -> None:
    params: dict[str, Any] = {"ring_timeout": 5.0}
    _quick._file_defaults({"call": {"ring-timeout": 30, "bitrate": 24, "connect-timeout": 9},
                           "listen": {"auto-accept": True}}, params)
    assert params == {"ring_timeout": 5.0, "bitrate": 24}
    for tables in ({"call": {"standalone": True}}, {"call": {"no-such": 1}}, {"nosuch": {}}, {"call": 3},
                   {"call": {"bitrate": "many"}}, {"call": {"video": "maybe"}}):
        with pytest.raises(_quick._NotHere):
            _quick._file_defaults(tables, {})
