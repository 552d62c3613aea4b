"""Command-line values coerced without pydantic give what Typer's own coercion gives.

Each case runs through Typer's real adapter (pydantic) and through ours
(commands/_coerce.py): the same value of the same type, or the same error
message.  Values ours takes must be taken (else start-up imports pydantic
again); values it cannot be sure of go to Typer's adapter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer import _coercion, core
from typer.models import ArgumentInfo, OptionInfo

from callctl.commands import _coerce

NUMBERS = ["0", "1", "15", "007", "-3", "+4", "1.5", "0.1", "60", "60.0", "61", "0.05", "1e3", "1.", ".5",
           "abc", "", " 7", "7 ", "1_000", "nan", "inf", "-inf", "0x10", "99999999999999999999999", 3, 15.0, True]
STRINGS = ["alice", "", " spaced ", "ünïcode", "--x", "a\0b", b"bytes", 5]
FLAGS = [True, False, "true", "no", "1", "", "maybe"]
PATHS = ["/tmp", "/nonexistent/x.wav", "rel/file.wav", "", " ", "a\0b", "-", Path("/tmp")]

#: (annotation, parameter, values, the values our coercion must take itself)
CASES: list[tuple[Any, Any, list[Any], set[Any]]] = [
    (str, OptionInfo(), STRINGS, {"alice", "", " spaced ", "--x"}),
    (bool, OptionInfo(), FLAGS, {True, False}),
    (int, OptionInfo(), NUMBERS, {"0", "15", "007", "-3", "+4", 3}),
    (int, OptionInfo(min=6, max=510), NUMBERS, {"15", "60"}),
    (float, OptionInfo(), NUMBERS, {"0", "1", "1.5", "0.05", "-3", 3, 15.0}),
    (float, OptionInfo(min=1, max=60), NUMBERS, {"1", "15", "1.5", "60.0", 15.0}),
    (float, OptionInfo(min=0.1), NUMBERS, {"0.1", "1", "61"}),
    (float, OptionInfo(min=1, max=60, clamp=True), NUMBERS, set()),
    (Path, OptionInfo(), PATHS, {"/tmp", "rel/file.wav", "-"}),
    (Path, OptionInfo(exists=True), PATHS, {"/tmp", "/nonexistent/x.wav"}),
    (Path, OptionInfo(exists=True, dir_okay=False), PATHS, {"/tmp"}),
    (Path, ArgumentInfo(), PATHS, {"/tmp"}),
    (list[str], OptionInfo(), [["a", "b"], ("a",), [], "a", [1]], {("a",)}),
]

IDS = ["str", "bool", "int", "int-6-510", "float", "float-1-60", "float-min-0.1", "float-clamped", "path",
       "path-exists", "path-exists-file", "path-argument", "list-of-str"]


def outcome(runtime: Any, value: Any) -> tuple[str, Any]:
    try:
        out = runtime._coerce_value(value, param=None, ctx=None)
    except typer.BadParameter as exc:
        return ("error", exc.format_message())
    return ("value", (type(out), repr(out)))  # repr: nan is not nan


@pytest.fixture(scope="module")
def plain() -> Any:
    assert _coerce.install(), "the installed Typer is not the one commands/_coerce.py verified"
    return core.build_runtime_param


@pytest.mark.parametrize("annotation,info,values,taken", CASES, ids=IDS)
def test_the_plain_coercion_gives_what_typers_gives(plain: Any, annotation: Any, info: Any,
                                                    values: list[Any], taken: set[Any]) -> None:
    descriptor = _coercion.resolve_type_descriptor(annotation, info)
    theirs = _coercion.build_runtime_param(descriptor)
    ours = plain(descriptor)
    assert type(ours).__name__ == "PlainRuntimeParam"
    for value in values:
        assert outcome(ours, value) == outcome(theirs, value), value
        if (tuple(value) if isinstance(value, list) else value) in taken:
            try:
                took = ours.fast(value, None, None) is not _coerce._DECLINE
            except typer.BadParameter:  # Typer's path checks, run by ours
                took = True
            assert took, f"{value!r} went to Typer's adapter"


def test_types_it_does_not_know_stay_typers(plain: Any) -> None:
    import enum

    class Colour(enum.Enum):
        RED = "red"

    for annotation in (Colour, tuple[int, int]):
        runtime = plain(_coercion.resolve_type_descriptor(annotation, OptionInfo()))
        assert type(runtime).__name__ != "PlainRuntimeParam"
    colour = plain(_coercion.resolve_type_descriptor(Colour, OptionInfo()))
    assert outcome(colour, "red") == ("value", (Colour, repr(Colour.RED)))


def test_every_parameter_of_call_and_listen_is_coerced_plainly(plain: Any) -> None:
    from callctl.app import app

    root = typer.main.get_command(app)
    commands = root.commands  # type: ignore[attr-defined]
    for command in (root, commands["call"], commands["listen"]):
        for param in command.params:
            if param.name in ("help", "version"):
                continue
            param._runtime_param = None
            assert type(param.get_runtime_param()).__name__ == "PlainRuntimeParam", (command.name, param.name)


def test_a_command_line_runs_without_importing_pydantic(tmp_path: Path) -> None:
    """A real process: global options, a path argument and a flag; then a bad number, which does."""
    conf = tmp_path / "config.toml"
    conf.write_text('server = "http://127.0.0.1:8080"\n')
    probe = ("import atexit, sys; atexit.register(lambda: print('pydantic:', 'pydantic' in sys.modules, "
             "file=sys.stderr)); from callctl.cli import main; sys.argv[0] = 'callctl'; main()")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    env = {k: v for k, v in env.items() if not k.startswith("CALLCTL_")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    good = run("--as", "alice", "config", "check", str(conf), "--json")
    assert good.returncode == 0, good.stderr
    assert "pydantic: False" in good.stderr
    bad = run("--as", "alice", "call", "bob", "--hangup-after", "soon")
    assert bad.returncode == 2
    assert "Invalid value for '--hangup-after'" in bad.stderr and "valid number" in bad.stderr
    assert "pydantic: True" in bad.stderr
