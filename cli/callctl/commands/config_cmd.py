"""Check a config file and show the settings in effect, with where each one came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from callctl.config import ConfigError
from callctl.exitcodes import ExitCode
from callctl.ui.console import fail

app = typer.Typer(no_args_is_help=True)


def _problems(settings: Any) -> list[str]:
    """What would stop a ``listen`` with these settings, found without going online."""
    problems = []
    if settings.token_file is not None:
        from callctl.config import TokenFile

        try:
            token = TokenFile(settings.token_file).read()
        except (OSError, ValueError) as exc:
            problems.append(f"token_file {settings.token_file}: {getattr(exc, 'strerror', None) or exc}")
        else:
            problems += _token_problems(token, f"token_file {settings.token_file}")
    elif settings.token:
        problems += _token_problems(settings.token, "token")
    elif not settings.user:
        problems.append("no identity: set token_file (or token, or user on the server's machine)")
    return problems


def _token_problems(token: str, where: str) -> list[str]:
    import time

    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.InvalidTokenError:
        return [f"{where}: not a callctl token (JWT)"]
    if not isinstance(claims, dict) or "sub" not in claims or "svc" not in claims:
        return [f"{where}: not a callctl token (no sub/svc)"]
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= time.time():
        return [f"{where}: the token expired {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(exp))}"]
    return []


@app.command("check")
def check(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(
        help="The file to check (default: the one callctl would read; --config before the command "
             "works too).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate a config file; print every setting in effect and where it came from (exit 2 if bad)."""
    from callctl.commands._settings import command_defaults, settings_with_file

    settings = ctx.obj
    if file is not None:
        try:
            settings = settings_with_file(ctx, file)
        except ConfigError as exc:
            fail(str(exc), ExitCode.USAGE)
    try:
        tables = command_defaults(ctx.find_root(), settings)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    problems = _problems(settings)
    where = str(settings.config_file) if settings.config_file else None
    rows = []
    for key in ("server", "user", "device", "service", "token", "token_file", "ca_file", "log_level", "json"):
        value = getattr(settings, key)
        if key == "token" and value:
            value = value[:12] + "…"  # a secret: enough to recognise it
        rows.append({"key": key, "value": None if value is None else str(value) if isinstance(value, Path) else value,
                     "from": settings.sources.get(key, "default")})
    for command, values in tables.items():
        for key, value in values.items():
            rows.append({"key": f"{command}.{key.replace('_', '-')}", "value": value,
                         "from": f"config file {where}"})
    if settings.json or as_json:
        print(json.dumps({"ok": not problems, "file": where, "settings": rows, "problems": problems}))
    else:
        print(f"config file: {where or 'none (defaults, environment and flags only)'}")
        width = max(len(r["key"]) for r in rows)
        for r in rows:
            shown = "-" if r["value"] is None else r["value"]
            print(f"  {r['key']:<{width}}  {shown!s:<28}  ({r['from']})")
        for problem in problems:
            print(f"callctl: {problem}", file=sys.stderr)
        if not problems:
            print("ok")
    if problems:
        raise typer.Exit(int(ExitCode.USAGE))
