"""Run ``callctl listen`` as a systemd service: print the unit, or install and enable it."""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from callctl.config import SYSTEM_CONFIG
from callctl.exitcodes import ExitCode
from callctl.ui.console import fail

app = typer.Typer(no_args_is_help=True)

UNIT_NAME = "callctl-listen.service"
#: systemd restarts a service whose watchdog pings stop for this long (docs/SERVICE.md).
WATCHDOG_S = 30

SystemOpt = Annotated[bool, typer.Option(
    "--system", help="A system unit (/etc/systemd/system, runs as --run-as) instead of a user unit.")]
RunAsOpt = Annotated[str | None, typer.Option(
    help="System unit: the user the service runs as (default: you; needs the audio group).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config-file", help="The config file the service reads (default: /etc/callctl/config.toml for "
                          "--system, ~/.config/callctl/config.toml for a user unit).")]
ArgsOpt = Annotated[str, typer.Option(
    "--listen-args", help="Extra options for listen, e.g. '--auto-accept' (better: the config file).")]


def _executable() -> str:
    """The callctl the unit starts: this one, by absolute path (systemd wants one)."""
    here = Path(sys.argv[0])
    if here.name == "callctl" and here.is_file():
        return str(here.resolve())
    found = shutil.which("callctl")
    if found:
        return str(Path(found).resolve())
    return f"{sys.executable} -m callctl"


def _config_path(system: bool, config_file: Path | None) -> Path:
    if config_file is not None:
        return config_file.expanduser().absolute()
    if system:
        return SYSTEM_CONFIG
    from callctl.paths import config_dir

    return config_dir() / "config.toml"


def unit_text(*, system: bool, run_as: str | None, config_file: Path | None, listen_args: str = "") -> str:
    """The unit file: ``Type=notify``, the watchdog, a clean SIGTERM stop, restart on failure."""
    config = _config_path(system, config_file)
    extra = " ".join(shlex.quote(a) for a in shlex.split(listen_args))
    exec_start = f"{_executable()} --config {shlex.quote(str(config))} --log-level info listen"
    if extra:
        exec_start += f" {extra}"
    lines = [
        "# callctl listen as a service (docs/SERVICE.md): written by `callctl service unit`",
        "[Unit]",
        "Description=callctl phone (listen): takes calls on this device",
        "Wants=network-online.target",
        "After=network-online.target sound.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        # READY=1 once registered with the server; STATUS= lines; WATCHDOG=1 while healthy
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        f"WatchdogSec={WATCHDOG_S}",
        # SIGTERM hangs the call up and exits 0; a stuck stop is killed after this
        "TimeoutStopSec=15",
        "Restart=always",
        "RestartSec=5",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if system:
        user = run_as or getpass.getuser()
        lines += [
            f"User={user}",
            "SupplementaryGroups=audio video",
            # the control socket lives here: `sudo -u USER XDG_RUNTIME_DIR=/run/callctl callctl status`
            "RuntimeDirectory=callctl",
            "RuntimeDirectoryMode=0700",
            "Environment=XDG_RUNTIME_DIR=/run/callctl",
            "NoNewPrivileges=yes",
            "ProtectSystem=full",
            "PrivateTmp=yes",
        ]
    lines += ["", "[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}", ""]
    return "\n".join(lines)


def unit_path(system: bool) -> Path:
    if system:
        return Path("/etc/systemd/system") / UNIT_NAME
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


@app.command("unit")
def unit(system: SystemOpt = False, run_as: RunAsOpt = None, config_file: ConfigOpt = None,
         listen_args: ArgsOpt = "") -> None:
    """Print the systemd unit that runs `callctl listen` (Type=notify, watchdog, clean stop)."""
    _check_run_as(system, run_as)
    sys.stdout.write(unit_text(system=system, run_as=run_as, config_file=config_file,
                               listen_args=listen_args))


def _check_run_as(system: bool, run_as: str | None) -> None:
    if run_as is not None and not system:
        fail("--run-as is for a --system unit (a user unit runs as you)", ExitCode.USAGE)
    if run_as is not None:
        import pwd

        try:
            pwd.getpwnam(run_as)
        except KeyError:
            fail(f"no user {run_as!r} on this machine", ExitCode.USAGE)


@app.command("install")
def install(system: SystemOpt = False, run_as: RunAsOpt = None, config_file: ConfigOpt = None,
            listen_args: ArgsOpt = "",
            now: Annotated[bool, typer.Option("--now", help="Start it too (and restart it if running).")] = False,
            ) -> None:
    """Write the unit, enable it (systemctl), and say what was done."""
    _check_run_as(system, run_as)
    path = unit_path(system)
    config = _config_path(system, config_file)
    text = unit_text(system=system, run_as=run_as, config_file=config_file, listen_args=listen_args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", ExitCode.INTERNAL_ERROR)
    print(f"callctl: wrote {path}", file=sys.stderr)
    if not config.is_file():
        print(f"callctl: note: {config} does not exist yet; the service reads server, identity "
              f"(token_file) and [command.listen] from it (docs/SERVICE.md)", file=sys.stderr)
    scope = [] if system else ["--user"]
    steps = [["daemon-reload"], ["enable", UNIT_NAME]]
    if now:
        steps.append(["restart", UNIT_NAME])
    for step in steps:
        cmd = ["systemctl", *scope, *step]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            fail(f"systemctl not found: the unit is written; enable it with "
                 f"'systemctl {' '.join(scope + ['enable', UNIT_NAME])}' on a systemd machine",
                 ExitCode.INTERNAL_ERROR)
        except subprocess.TimeoutExpired:
            fail(f"{' '.join(cmd)} did not finish in 60 s", ExitCode.INTERNAL_ERROR)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            fail(f"{' '.join(cmd)} failed: {why[-1] if why else f'exit {done.returncode}'} "
                 f"(the unit is written at {path})", ExitCode.INTERNAL_ERROR)
        print(f"callctl: ran {' '.join(cmd)}", file=sys.stderr)
    where = "sudo journalctl -u" if system else "journalctl --user -u"
    print(f"callctl: {UNIT_NAME} is enabled{' and started' if now else ' (start: systemctl ' + ' '.join(scope + ['start', UNIT_NAME]) + ')'}; "
          f"logs: {where} {UNIT_NAME}", file=sys.stderr)
    if not system:
        print("callctl: to start it at boot without a login: loginctl enable-linger "
              f"{getpass.getuser()}", file=sys.stderr)
