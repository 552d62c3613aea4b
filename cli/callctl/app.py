"""The ``callctl`` command tree: global options here, one module per command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from callctl import __version__
from callctl.commands import call as call_cmd
from callctl.commands import config_cmd
from callctl.commands import control as control_cmd
from callctl.commands import demo as demo_cmd
from callctl.commands import devices as devices_cmd
from callctl.commands import preview as preview_cmd
from callctl.commands import listen as listen_cmd
from callctl.commands import server as server_cmd
from callctl.commands import service as service_cmd
from callctl.commands import token as token_cmd
from callctl.commands._coerce import install as _plain_coercion
from callctl.commands._settings import command_defaults, given_settings
from callctl.config import ConfigError, resolve
from callctl.exitcodes import ExitCode
from callctl.ui.console import fail

app = typer.Typer(
    name="callctl",
    help="1:1 audio and video calls from the command line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flags_take_no_value() -> None:
    """Help shows a flag as just its name, not ``--loop <bool>`` (which reads as taking a value)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()


def _version(value: bool) -> None:
    if value:
        print(f"callctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option("--server", envvar="CALLCTL_SERVER", help="Signaling server URL."),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--as", envvar="CALLCTL_USER", help="Your user id.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", envvar="CALLCTL_DEVICE",
                     help="This device's id (default: the host name); also after the command."),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option("--service", envvar="CALLCTL_SERVICE", help="Service id (tenant)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="CALLCTL_TOKEN", help="Access token (JWT).", show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CALLCTL_CONFIG",
            help="TOML config file (default: ~/.config/callctl/config.toml, then /etc/callctl/config.toml).",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", envvar="CALLCTL_CA_FILE",
                     help="Trust the certificates in this PEM file for an https server "
                          "(a --tls self-signed server's server-cert.pem)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", envvar="CALLCTL_TOKEN_FILE",
                     help="Read the access token from this file, again whenever one is needed "
                          "(rotate it without restarting a listen)."),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", envvar="CALLCTL_LOG", metavar="debug|info|warning|error|trace",
                     help="callctl's own log lines on stderr (plain; journald-ready under systemd)."),
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", envvar="CALLCTL_JSON", help="NDJSON events on stdout.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    try:
        ctx.obj = resolve(
            server=server, user=user, service=service, token=token, json=json, config=config,
            device=device, ca_file=ca_file, token_file=token_file, log_level=log_level,
            given=given_settings(ctx),
        )
        ctx.default_map = command_defaults(ctx, ctx.obj)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


app.command("server", help=server_cmd.__doc__)(server_cmd.server)
app.command("call", help=call_cmd.__doc__, epilog=call_cmd.EXAMPLES)(call_cmd.call)
app.command("listen", help=listen_cmd.__doc__, epilog=listen_cmd.EXAMPLES)(listen_cmd.listen)
app.command("demo", help=demo_cmd.__doc__)(demo_cmd.demo)
app.command("devices", help=devices_cmd.__doc__)(devices_cmd.devices)
app.command("preview", help=preview_cmd.__doc__)(preview_cmd.preview)
for _name in ("accept", "decline", "hangup", "mute", "unmute", "hold", "unhold", "video", "dtmf", "send",
              "snapshot", "switch", "status", "events"):
    app.command(_name)(getattr(control_cmd, _name))
app.add_typer(token_cmd.app, name="token", help=token_cmd.__doc__)
app.add_typer(service_cmd.app, name="service", help=service_cmd.__doc__)
app.add_typer(config_cmd.app, name="config", help=config_cmd.__doc__)


def main() -> None:
    """Run the CLI; usage errors become one line on stderr and exit 2."""
    import sys

    _plain_coercion()  # no pydantic for strings, numbers and paths (commands/_coerce.py)

    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = ExitCode.INTERRUPTED
    except typer.TyperException as exc:  # click's UsageError and friends, as vendored by Typer
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)
        else:
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"callctl: {exc.format_message()}{hint}", file=sys.stderr)
        code = ExitCode.USAGE
    sys.exit(int(code) if isinstance(code, int) else 0)
