"""CPU time and memory of a process, and the machine's CPU ticks, read from Linux /proc."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def available() -> bool:
    """True where /proc has what this module reads (Linux)."""
    return Path("/proc/self/stat").exists() and Path("/proc/self/status").exists()


def cpu_ticks(pid: int, thread: int | None = None) -> int:
    """utime + stime of a process (every thread), or of one of its threads, in clock ticks."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    stat = Path(path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in () may hold spaces
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    return cpu_ticks(pid, thread) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) in KiB; empty once the pid is gone."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs together since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    return sum(parts) - idle, sum(parts)


def machine_busy_pct(start: tuple[int, int], end: tuple[int, int]) -> float:
    """All processes' CPU between two ``machine_ticks()``, in % of one CPU."""
    return (end[0] - start[0]) / max(1, end[1] - start[1]) * 100 * (os.cpu_count() or 1)


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def threads(pid: int) -> int:
    """How many threads a process runs (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0
