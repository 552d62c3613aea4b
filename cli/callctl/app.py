"""The ``callctl`` command tree: global options here, one module per command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from callctl import __version__
from callctl.commands import call as call_cmd
from callctl.commands import control as control_cmd
from callctl.commands import demo as demo_cmd
from callctl.commands import devices as devices_cmd
from callctl.commands import preview as preview_cmd
from callctl.commands import listen as listen_cmd
from callctl.commands import server as server_cmd
from callctl.commands import token as token_cmd
from callctl.config import ConfigError, Settings, resolve
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
            device=device, ca_file=ca_file,
        )
        ctx.default_map = command_defaults(ctx, ctx.obj)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


def command_defaults(ctx: typer.Context, settings: Settings) -> dict[str, dict[str, Any]]:
    """``[command.NAME]`` tables of the config file as option defaults (flag > env > file).

    Keys are option names without the dashes' prefix (``turn-secret-file``);
    an unknown command or option is an error, not silently ignored.
    """
    tables = settings.extra.get("command", {})
    where = f"config file {settings.config_file}"
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'command' must be a table of [command.NAME] tables")
    group = ctx.command
    commands: dict[str, Any] = getattr(group, "commands", {})
    defaults: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        command = commands.get(name)
        if command is None or not isinstance(table, dict):
            raise ConfigError(f"{where}: [command.{name}] is not a command's table")
        options = {param.name: param for param in command.params if param.param_type_name == "option"}
        values: dict[str, Any] = {}
        for key, value in table.items():
            param_name = str(key).replace("-", "_")
            if param_name not in options:
                raise ConfigError(f"{where}: [command.{name}] has no option {key!r}")
            values[param_name] = value
        defaults[name] = values
    return defaults


app.command("server", help=server_cmd.__doc__)(server_cmd.server)
app.command("call", help=call_cmd.__doc__, epilog=call_cmd.EXAMPLES)(call_cmd.call)
app.command("listen", help=listen_cmd.__doc__, epilog=listen_cmd.EXAMPLES)(listen_cmd.listen)
app.command("demo", help=demo_cmd.__doc__)(demo_cmd.demo)
app.command("devices", help=devices_cmd.__doc__)(devices_cmd.devices)
app.command("preview", help=preview_cmd.__doc__)(preview_cmd.preview)
for _name in ("accept", "decline", "hangup", "mute", "unmute", "video", "status", "events"):
    app.command(_name)(getattr(control_cmd, _name))
app.add_typer(token_cmd.app, name="token", help=token_cmd.__doc__)


def main() -> None:
    """Run the CLI; usage errors become one line on stderr and exit 2."""
    import sys

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
