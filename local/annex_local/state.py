"""The state directory of a local stack: who is running, where it answers, where it logs.

- `lock`: held (flock) by the running stack for its whole life. The kernel releases it when the process
  dies, however it dies, so "is a stack running here?" never depends on a pid that may have been reused.
- `pid`: the running stack's process id (for `annex-local down`).
- `env`: written once the stack is ready, removed when it stops cleanly. An `env` with no stack holding
  the lock is stale: the stack was killed, and everything it held (annexes, instances, names) is gone.
- `annex-local.log`: everything the stack logs (the functions' JSON logs, requests, failures).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOG_NAME = "annex-local.log"


@dataclass(frozen=True)
class StateDir:
    path: Path

    @property
    def env(self) -> Path:
        return self.path / "env"

    @property
    def pid_file(self) -> Path:
        return self.path / "pid"

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    @property
    def log(self) -> Path:
        return self.path / LOG_NAME

    def acquire(self) -> IO[str] | None:
        """Take the stack's lock, or None when another live process holds it. Keep the returned file
        open for as long as the stack runs."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = self.lock_file.open("a")
        # `running_pid` probes the lock by taking it for an instant; a few tries tell a probe from a
        # stack that holds it.
        for _ in range(20):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)
            else:
                return handle
        handle.close()
        return None

    def running_pid(self) -> int | None:
        """The pid of the stack running on this directory, or None when none is (nobody holds the lock)."""
        if not self.lock_file.exists():
            return None
        with self.lock_file.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
                return None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return -1  # held, but the pid is not written yet

    def stale(self) -> list[Path]:
        """Files a stack that did not stop cleanly left behind (call only when no stack runs)."""
        return [p for p in (self.env, self.pid_file) if p.exists()]

    def clear(self) -> None:
        for path in (self.env, self.pid_file):
            path.unlink(missing_ok=True)

    def read_env(self) -> dict[str, str]:
        try:
            text = self.env.read_text()
        except OSError:
            return {}
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def write_pid(self) -> None:
        tmp = self.path / "pid.tmp"
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.pid_file)
