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
from ..serialize import dumps

DB_NAME = "study.db"
LOCK_NAME = "study.lock"


class StudyError(BatchscopeError):
    """The study directory is missing, busy or holds something else."""


class StudyLock:
    """Exclusive, non-blocking ownership of a study directory for the life of this process (or until released)."""

    def __init__(self, directory: "str | Path"):
        self.path = Path(directory) / LOCK_NAME
        self._fd: Optional[int] = None
        self._created: list[Path] = []   # what acquiring made (directories, the lock file), newest last

    def acquire(self) -> "StudyLock":
        import fcntl

        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._created = list(reversed(missing)) + ([] if existed else [self.path])
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

    def __exit__(self, exc_type, *exc) -> None:
        self.release()
        if exc_type is not None and not ResultStore.exists(self.path.parent):
            self._remove_created()

    def _remove_created(self) -> None:
        """A study refused before it saved anything leaves no trace: the lock file and the directories made for it."""
        for p in reversed(self._created):
            try:
                p.unlink() if p == self.path else p.rmdir()   # rmdir: only while still empty
            except OSError:
                break
        self._created = []


class ResultStore:
    """Runs by key, plus the plan and other study-wide records, in ``DIR/study.db``.

    ``readonly=True`` (what ``report`` uses) opens the file without writing a byte: no table is
    created and the journal mode is left as it is. A file that is not a readable study database
    is a :class:`StudyError` naming it; a run whose stored record cannot be read is listed in
    :attr:`damaged` and is not counted as done, so a resume runs it again.
    """

    def __init__(self, directory: "str | Path", readonly: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.damaged: list[str] = []
        try:
            if readonly:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
                self._check_tables()
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                with self._db:
                    self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    self._db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
                                     "record TEXT NOT NULL, finished REAL NOT NULL)")
                self._check_tables()
        except sqlite3.DatabaseError as e:
            raise self._damaged_error(e) from None

    def _check_tables(self) -> None:
        names = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "runs"} <= names:
            raise StudyError(f"{self.path} is an SQLite database but not a batchscope study (it has no meta and "
                             "runs tables); point --dir at a directory written by `batchscope study`")

    def _damaged_error(self, e: Exception) -> StudyError:
        return StudyError(f"{self.path} is damaged or not a study database ({e}); move it away and run the study "
                          "again into that directory (finished runs in it cannot be read back)")

    def _query(self, sql: str, args: tuple = ()) -> list:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise self._damaged_error(e) from None

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
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except ValueError:
            raise StudyError(f"the {name!r} record in {self.path} is damaged (not JSON); start the study again "
                             "in a new directory") from None

    def set_meta(self, name: str, value) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, dumps(value, indent=None)))

    def save_run(self, key: str, status: str, record: dict) -> None:
        with self._db:  # one transaction per run: committed before the next run starts
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)",
                             (key, status, dumps(record, indent=None), time.time()))

    def _readable(self) -> Iterator[tuple[str, str, dict]]:
        self.damaged = []
        for key, status, text in self._query("SELECT key, status, record FROM runs ORDER BY finished"):
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.damaged.append(key)
                continue
            yield key, status, record

    def keys(self, statuses: tuple = ("ok", "diverged")) -> set[str]:
        """Keys of the runs finished with a readable record (a damaged one is run again)."""
        return {key for key, status, _ in self._readable() if status in statuses}

    def records(self, statuses: Optional[tuple] = None) -> Iterator[dict]:
        """Every readable run record, oldest first; the keys of unreadable ones are left in :attr:`damaged`.

        ``statuses`` keeps the records with one of them (("ok", "diverged"): the finished runs).
        """
        for _, status, record in self._readable():
            if statuses is None or status in statuses:
                yield record

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM runs")[0][0]
