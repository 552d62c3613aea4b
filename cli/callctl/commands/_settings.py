"""The global settings of a command line: where each came from, and the ``[command.NAME]`` tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from callctl.config import ConfigError, Settings, resolve


#: Parameter names of the global options, by the setting they fill.
_SETTING_OF = {"user": "user", "server": "server", "device": "device", "service": "service",
               "token": "token", "token_file": "token_file", "ca_file": "ca_file",
               "log_level": "log_level", "json": "json"}


def given_settings(ctx: Any) -> dict[str, str]:
    """Which global settings the command line or the environment gave (for ``config check``)."""
    out = {}
    for param, setting in _SETTING_OF.items():
        source = getattr(ctx.get_parameter_source(param), "name", None)  # Typer's own click
        if source == "COMMANDLINE":
            out[setting] = "command line"
        elif source == "ENVIRONMENT":
            out[setting] = "environment"
    return out


def command_defaults(ctx: Any, settings: Settings) -> dict[str, dict[str, Any]]:
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


def settings_with_file(ctx: typer.Context, config: Path) -> Settings:
    """The settings this command line would have with ``--config config``."""
    root = ctx.find_root()
    params: dict[str, Any] = {k: root.params.get(k) for k in ("server", "user", "service", "token", "device",
                                              "ca_file", "token_file", "log_level")}
    return resolve(**params, json=bool(root.params.get("json")), config=config,
                   given=given_settings(root))
