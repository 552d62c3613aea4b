"""Mint access tokens signed with the server's secret."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from callctl.exitcodes import ExitCode
from callctl.paths import default_secret_file
from callctl.ui.console import fail

app = typer.Typer(no_args_is_help=True)


@app.command("issue")
def issue(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="User id the token is for (the `sub` claim).")],
    service: Annotated[
        str | None, typer.Option("--service", help="Service id (the `svc` claim) (default: global --service).")
    ] = None,
    ttl: Annotated[str, typer.Option(help="Lifetime: 3600, 90s, 30m, 24h, 7d.")] = "24h",
    secret_file: Annotated[
        Path | None,
        typer.Option(envvar="CALLCTL_SECRET_FILE", help="The server's secret (default: ~/.local/state/callctl/server-secret)."),
    ] = None,
) -> None:
    """Print a token for USER, signed with the server's secret."""
    from callctl.signaling.auth import SecretError, TokenError, issue_token, parse_duration, read_secret

    try:
        ttl_s = parse_duration(ttl)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    svc = service or ctx.obj.service
    try:
        issue_token(b"0" * 32, user, svc, ttl_s)  # validates the ids before any file access
        secret = read_secret(secret_file or default_secret_file())
        print(issue_token(secret, user, svc, ttl_s))
    except (SecretError, TokenError) as exc:
        fail(str(exc), ExitCode.USAGE)
