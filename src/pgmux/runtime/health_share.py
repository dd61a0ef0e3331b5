"""The files through which worker processes share the health checks of one split database (issue 14
item 4). The decisions are runtime/health_monitor.py's; the encoding and the staleness rule are
routing/verdicts.py's.

In the supervisor's private directory (`WorkerShare.rundir`, 0700), under `health/`, per database
(named by a digest of its name):
- `<digest>.lock`: the worker holding an exclusive flock on it is the checker. Every follower tries to
  take it without blocking at each of its ticks; the kernel drops the lock when its holder dies (or stops
  the monitor), so another worker takes over within a tick. flock, not lockf: a POSIX lock would also be
  dropped by closing any other descriptor of the file, and the workers' shared counts lock is a POSIX
  one that tests look for in /proc/locks.
- `<digest>.board`: the checker's verdicts (routing/verdicts.Board), replaced whole by a rename after
  every check, so a reader sees one publication or the next, never a mix. A follower stats it each tick
  and reads it only when it changed (inode, mtime, size).
- `<digest>.kick`: a follower that wants a check now (its traffic saw a host fail, or a client waits
  for a primary) sets its mtime; the checker looks at each tick and checks every host at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time

from pgmux.routing.verdicts import Board, decode, encode

__all__ = ["HealthShare"]

log = logging.getLogger("pgmux")


class HealthShare:
    """One split database's lock, board and kick files, as one worker sees them."""

    def __init__(self, rundir: str, database: str, worker: int) -> None:
        self.database = database
        self.worker = worker
        directory = os.path.join(rundir, "health")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        digest = hashlib.blake2b(database.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
        base = os.path.join(directory, digest)
        self.lock_path, self.board_path, self.kick_path = base + ".lock", base + ".board", base + ".kick"
        self.leading = False  # this worker holds the lock: it checks and publishes
        self.seq = 0  # the last board published or read
        self._fd: int | None = None
        self._seen: tuple[int, int, int] | None = None  # the board file last read: (inode, mtime, size)
        self._kick_seen: int | None = None

    # -- the checker's lock ---------------------------------------------------------------------------
    def try_lead(self) -> bool:
        """Take the checker's lock if nobody holds it (never blocks)."""
        if self.leading:
            return True
        try:
            if self._fd is None:
                self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            log.warning("health checks of %s: cannot use the lock file %s: %s", self.database, self.lock_path, e)
            return False
        self.leading = True
        self._kick_seen = self._kick_mtime()  # kicks before this worker checked were for the old checker
        return True

    def close(self) -> None:
        """Give up the lock (the monitor stops): another worker takes over at its next tick."""
        self.leading = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the board ------------------------------------------------------------------------------------
    def publish(self, board: Board) -> None:
        tmp = f"{self.board_path}.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(encode(board))
            os.replace(tmp, self.board_path)
        except OSError as e:
            log.warning("health checks of %s: cannot publish the verdicts: %s", self.database, e)

    def read(self, force: bool = False) -> Board | None:
        """The board, when it changed since the last read (or `force`); None otherwise, or when there is
        none or it cannot be read."""
        try:
            st = os.stat(self.board_path)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("health checks of %s: cannot read the verdicts: %s", self.database, e)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._seen and not force:
            return None
        try:
            with open(self.board_path, "rb") as f:
                board = decode(f.read(1 << 20))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("health checks of %s: unusable verdicts in %s: %s", self.database, self.board_path, e)
            self._seen = key
            return None
        self._seen = key
        self.seq = max(self.seq, board.seq)
        return board

    # -- asking the checker for a check now -------------------------------------------------------------
    def kick(self) -> None:
        try:
            fd = os.open(self.kick_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.utime(fd, ns=(time.time_ns(), time.time_ns()))
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("health checks of %s: cannot ask the checking worker for a check: %s", self.database, e)

    def kicked(self) -> bool:
        """Has a follower asked for a check since the last call?"""
        mtime = self._kick_mtime()
        if mtime == self._kick_seen:
            return False
        self._kick_seen = mtime
        return True

    def _kick_mtime(self) -> int | None:
        try:
            return os.stat(self.kick_path).st_mtime_ns
        except OSError:
            return None
