"""One driver per study, and the proof that it lives.

One driver per study: an flock on the study folder's ``driver.lock`` that dies with its
holder, and on SQLite one on the database's own lock file and on the database file itself
(a hard link has a path of its own); on a server PostgreSQL's advisory lock on the
driver's own connection, which the server drops when the driver dies. While it sweeps, a
driver on a server (or with a cluster) beats a heartbeat into the database every
HEARTBEAT_S seconds: a worker that misses it for DRIVER_TIMEOUT_S stops its trial.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from vaegrid.db.engine import Database, pg_advisory_lock
from vaegrid.db.store import Store
from vaegrid.errors import InputError, first_line
from vaegrid.layout import StudyLayout, database_lock
from vaegrid.run.leases import DRIVER_TIMEOUT_S
from vaegrid.safeio import ensure_dir, missing, open_fd
from vaegrid.train import provenance

HEARTBEAT_S = 4.0  # the driver's heartbeat (servers, clusters); workers allow DRIVER_TIMEOUT_S


class DriverLock:
    """An exclusive flock on a lock file, holding the driver's pid: the study folder's
    ``driver.lock``, and on SQLite the database's own (one driver per folder, and one per
    database however it is named).

    The kernel releases it when the driver dies, however it dies, so a crashed driver's
    lock is taken over by the next one without any stale-lock guessing. The lock file is
    opened without following links, and must be a regular file.
    """

    def __init__(self, path: Path, what: str = "this study") -> None:
        self.path = path
        self.what = what  # for the refusal: "this study", "this database"
        self.fd: int | None = None

    @classmethod
    def of(cls, layout: StudyLayout) -> DriverLock:
        return cls(layout.driver_lock)

    def __enter__(self) -> DriverLock:
        ensure_dir(self.path.parent)
        self.created = not self.path.exists() and not self.path.is_symlink()
        fd = open_fd(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            where = self.path.parent if self.what == "this study" else self.path
            raise InputError(
                f"{where}: another driver (pid {pid}) is running {self.what}; "
                "wait for it, or stop it and run again"
            ) from None
        except OSError as e:  # a filesystem without flock (some NFS): the server's lock rules
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise InputError(f"{self.path}: cannot lock ({e.strerror})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def undo(self) -> None:
        """Remove the lock file if this lock made it (a run refused: nothing written)."""
        if getattr(self, "created", False):
            self.path.unlink(missing_ok=True)

    @staticmethod
    def holder(path: Path) -> int | None:
        """The pid of the live driver holding the lock file ``path`` (-1 if unreadable)."""
        if not path.exists() and not path.is_symlink():
            return None
        fd = open_fd(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    @staticmethod
    def live(db: Database, layout: StudyLayout) -> int | None:
        """The pid of a live driver of this SQLite database or of this study folder."""
        assert db.path is not None
        for path in (database_lock(db.path), layout.driver_lock):
            pid = DriverLock.holder(path)
            if pid is not None:
                return pid
        return None


@contextmanager
def driver_lock(db: Database, layout: StudyLayout, name: str) -> Iterator[None]:
    """One driver per study folder and one per database, however either is named.

    The study folder's flock, always (a PostgreSQL study's trial folders are a folder too);
    then on SQLite the database's own lock file beside it, and on a server PostgreSQL's
    advisory lock. Refused at any point, even later inside the block, the run leaves
    nothing behind: the lock files, folders and database file it made go again.
    """
    made = missing(layout.root) + (missing(db.path.parent) if db.path is not None else [])
    fresh_db = db.path is not None and not db.path.exists()
    locks = [DriverLock.of(layout)]
    if db.path is not None:
        locks.append(DriverLock(database_lock(db.path), "a study on this database"))
    try:
        with ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            if db.path is None:
                stack.enter_context(server_lock(db, name))
            yield
    except InputError:
        for lock in locks:
            lock.undo()
        if fresh_db and db.path is not None:
            for suffix in ("", "-wal", "-shm"):
                with suppress(OSError):
                    db.path.with_name(db.path.name + suffix).unlink()
        for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):
                folder.rmdir()  # only if empty
        raise


@contextmanager
def server_lock(db: Database, name: str) -> Iterator[None]:
    """PostgreSQL's advisory lock for the study, held on a connection of its own."""
    try:
        lock = pg_advisory_lock(db, name)
        held = lock.__enter__()
    except Exception as e:  # unreachable, refused, bad credentials: one line
        raise InputError(f"{db}: cannot connect ({first_line(e)})") from None
    try:
        if not held:
            reader = Store.reader(db)
            try:
                live = reader.live_driver(DRIVER_TIMEOUT_S * 3)
            finally:
                reader.close()
            who = f"pid {live.pid} on {live.host}" if live else "pid ?"
            raise InputError(
                f"{db}: another driver ({who}) is running study {name!r}; "
                "wait for it, or stop it and run again"
            )
        yield
    finally:
        lock.__exit__(None, None, None)


@contextmanager
def file_lock(db: Database) -> Iterator[None]:
    """An flock on the SQLite database file itself: one driver per file, also when it is
    reached through a hard link (whose path has a lock file of its own). SQLite's own locks
    are POSIX record locks, which flock does not touch."""
    if db.path is None:
        yield
        return
    fd = open_fd(db.path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{db}: another driver is running a study on this database file, reached "
                "through another path (a hard link?); wait for it, or stop it and run again"
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def heartbeat(store: Store, study: str, token: str, on: bool) -> Iterator[None]:
    """While the block runs, tell the database every few seconds that this driver lives."""
    if not on:
        yield
        return
    host, pid = provenance.host(), os.getpid()
    store.driver_beat(study, token, pid, host)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            with suppress(SQLAlchemyError):  # a passing fault: workers allow DRIVER_TIMEOUT_S
                store.driver_beat(study, token, pid, host)

    thread = threading.Thread(target=beat, name="vaegrid-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with suppress(SQLAlchemyError):
            store.driver_gone(study, token)


__all__ = ["DriverLock", "driver_lock", "file_lock", "heartbeat", "server_lock"]
