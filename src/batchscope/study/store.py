"""The study directory: a SQLite database of finished runs and a lock held while a study runs.

Each run is written in its own transaction the moment it finishes, so a crash (even SIGKILL) loses
at most the runs still in progress. The lock is an ``fcntl.flock`` on ``study.lock``: the kernel
drops it when the process that holds it dies, however it dies, so a stale lock cannot outlive a
crashed study and a live one cannot be ignored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator, Optional

from ..errors import BatchscopeError

DB_NAME = "study.db"
LOCK_NAME = "study.lock"


class StudyError(BatchscopeError):
    """The study directory is missing, busy or holds something else."""


class StudyLock:
    """Exclusive, non-blocking ownership of a study directory for the life of this process (or until released)."""

    def __init__(self, directory: "str | Path"):
        self.path = Path(directory) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "StudyLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StudyError(f"study directory {self.path.parent} is in use by {holder}; wait for that study to "
                             "finish (or stop it) and then run `batchscope study --resume "
                             f"{self.path.parent}`") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class ResultStore:
    """Runs by key, plus the plan and other study-wide records, in ``DIR/study.db``."""

    def __init__(self, directory: "str | Path"):
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
                             "record TEXT NOT NULL, finished REAL NOT NULL)")

    @staticmethod
    def exists(directory: "str | Path") -> bool:
        return (Path(directory) / DB_NAME).is_file()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_meta(self, name: str):
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, name: str, value) -> None:
        from ..report.jsonio import dumps

        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, dumps(value, indent=None)))

    def save_run(self, key: str, status: str, record: dict) -> None:
        from ..report.jsonio import dumps

        with self._db:  # one transaction per run: committed before the next run starts
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)",
                             (key, status, dumps(record, indent=None), time.time()))

    def keys(self, statuses: tuple = ("ok", "diverged")) -> set[str]:
        marks = ",".join("?" * len(statuses))
        return {r[0] for r in self._db.execute(f"SELECT key FROM runs WHERE status IN ({marks})", statuses)}

    def records(self, statuses: Optional[tuple] = None) -> Iterator[dict]:
        """Every run record, oldest first; ``statuses`` keeps those with one of them (("ok", "diverged"): done)."""
        for (status, text) in self._db.execute("SELECT status, record FROM runs ORDER BY finished"):
            if statuses is None or status in statuses:
                yield json.loads(text)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
