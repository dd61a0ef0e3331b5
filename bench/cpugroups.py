"""cgroup v1 CPU quotas for bench/scaling.py: one group per pooler process, each with the same quota, so that
the pooler's cores are the bottleneck on a host where PostgreSQL and pgbench share them (see bench/README.md).

Groups are `<root>/pgmux-bench-<our pid>-<n>`. `CpuGroups.close()` moves what is left in them back to the
root group and removes them; it runs from a `finally`, from atexit, and is idempotent. Groups left by a
bench that was SIGKILLed (their pid is gone) are removed at the next start. Plus the /proc readers the
bench needs: children of a pid, CPU ticks, and which process owns which TCP socket.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable

CGROUP_CPU = "/sys/fs/cgroup/cpu"
PERIOD_US = 100_000
PREFIX = "pgmux-bench-"
_NAME = re.compile(r"^pgmux-bench-(\d+)-(\d+)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class CgroupError(RuntimeError):
    """The cgroup v1 cpu controller is missing, or we may not write to it (run as root)."""


def group_name(owner_pid: int, n: int) -> str:
    return f"{PREFIX}{owner_pid}-{n}"


def parse_group_name(name: str) -> tuple[int, int] | None:
    """(owner pid, n) of a group this bench made, None for any other name."""
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def stale_groups(names: Iterable[str], alive: Callable[[int], bool]) -> list[str]:
    """The groups among `names` made by a bench whose process is gone."""
    out = []
    for name in names:
        parsed = parse_group_name(name)
        if parsed is not None and not alive(parsed[0]):
            out.append(name)
    return sorted(out)


def quota_us(quota: float, period_us: int = PERIOD_US) -> int:
    """cpu.cfs_quota_us for `quota` cores per period (0.25 = a quarter of one core); 0 = no limit (-1)."""
    if quota < 0:
        raise ValueError("quota must be >= 0")
    if quota == 0:
        return -1
    us = round(quota * period_us)
    if us < 1000:  # the kernel's minimum
        raise ValueError(f"quota {quota} is below 1 ms per {period_us} us period")
    return us


@dataclasses.dataclass(frozen=True)
class Throttle:
    periods: int = 0
    throttled: int = 0
    throttled_ns: int = 0

    def minus(self, before: Throttle) -> Throttle:
        return Throttle(self.periods - before.periods, self.throttled - before.throttled,
                        self.throttled_ns - before.throttled_ns)

    def fraction(self) -> float | None:
        """Share of the periods in which the group used up its quota (None: it never ran)."""
        return self.throttled / self.periods if self.periods > 0 else None


def parse_cpu_stat(text: str) -> Throttle:
    fields = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
    return Throttle(int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0)),
                    int(fields.get("throttled_time", 0)))


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


class CpuGroups:
    """Up to `count` groups with the same quota, created at once; `place(i, pid)` moves a process (all its
    threads) into group i."""

    def __init__(self, count: int, quota: float, root: str = CGROUP_CPU, owner_pid: int | None = None) -> None:
        self.root = root
        self.quota = quota
        self.owner = owner_pid if owner_pid is not None else os.getpid()
        self.paths: list[str] = []
        if not os.path.isfile(os.path.join(root, "cpu.cfs_quota_us")):
            raise CgroupError(f"no cgroup v1 cpu controller at {root} (cpu.cfs_quota_us missing)")
        self.remove_stale()
        try:
            for n in range(count):
                path = os.path.join(root, group_name(self.owner, n))
                os.mkdir(path)
                self.paths.append(path)
                self._write(path, "cpu.cfs_period_us", PERIOD_US)
                self._write(path, "cpu.cfs_quota_us", quota_us(quota))
        except OSError as e:
            self.close()
            raise CgroupError(f"cannot set up cgroups under {root} (root needed): {e}") from e

    @staticmethod
    def _write(path: str, name: str, value: int) -> None:
        with open(os.path.join(path, name), "w") as f:
            f.write(f"{value}\n")

    def remove_stale(self) -> list[str]:
        removed = []
        for name in stale_groups(os.listdir(self.root), _pid_alive):
            path = os.path.join(self.root, name)
            self._empty(path)
            try:
                os.rmdir(path)
                removed.append(name)
            except OSError:
                pass
        return removed

    def place(self, index: int, pid: int) -> None:
        self._write(self.paths[index], "cgroup.procs", pid)

    def members(self, index: int) -> set[int]:
        with open(os.path.join(self.paths[index], "cgroup.procs")) as f:
            return {int(x) for x in f.read().split()}

    def throttle(self, index: int) -> Throttle:
        with open(os.path.join(self.paths[index], "cpu.stat")) as f:
            return parse_cpu_stat(f.read())

    def _empty(self, path: str) -> None:
        """Move every process still in the group back to the root group."""
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = f.read().split()
        except OSError:
            return
        for pid in pids:
            try:
                self._write(self.root, "cgroup.procs", int(pid))
            except OSError:
                pass  # it exited meanwhile

    def close(self) -> None:
        while self.paths:
            path = self.paths.pop()
            self._empty(path)
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"could not remove cgroup {path}: {e}", flush=True)

    def __enter__(self) -> CpuGroups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- /proc -------------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(out)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads), None if it is gone."""
    try:
        f = _stat_fields(pid)
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / CLK_TCK


@dataclasses.dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: int  # 1 = ESTABLISHED, 10 = LISTEN
    inode: int


def parse_proc_net_tcp(text: str) -> list[TcpSocket]:
    """The sockets of /proc/net/tcp (`sl local_address rem_address st ... uid timeout inode`)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            out.append(TcpSocket(int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16),
                                 int(parts[3], 16), int(parts[9])))
        except (ValueError, IndexError):
            continue
    return out


def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def tcp_sockets() -> list[TcpSocket]:
    with open("/proc/net/tcp") as f:
        return parse_proc_net_tcp(f.read())


def count_owned(sockets: list[TcpSocket], owners: dict[int, set[int]],
                match: Callable[[TcpSocket], bool]) -> dict[int, int]:
    """Per pid of `owners` (pid -> its socket inodes): how many of `sockets` that `match` it holds."""
    wanted = {s.inode for s in sockets if match(s)}
    return {pid: len(inodes & wanted) for pid, inodes in owners.items()}
