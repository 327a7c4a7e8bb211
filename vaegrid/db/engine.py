"""Where a study's database lives: a URL, SQLite (embedded, the default) or PostgreSQL.

Everything dialect-specific is here: parsing and checking the URL, making engines, the
insert-if-absent upsert, and the driver's lock on a server. The rest of vaegrid speaks
SQLAlchemy and Optuna's RDB storage over whatever :class:`Database` gives it.

Connections. A writer process keeps a few server connections open (a bounded pool,
:data:`POOL_KEPT`, at most :data:`POOL_MAX` at once; the threads of a Dask worker share
them), each checked with a ping before use so that one a restarted server or PgBouncer
dropped is replaced, not failed: a transaction on a kept connection costs 0.6 ms against
12.5 ms on a new one. PostgreSQL allows 100 connections by default (Optuna's users meet
this: optuna/optuna#1347), so past a few dozen worker processes put PgBouncer in
transaction mode in front: it keeps the server's connections, and vaegrid never uses a
session-level feature across transactions (no prepared statements; the driver's lock is
a transaction's advisory lock, engine.pg_advisory_lock). A writer's connection that fails (a
full server's "too many clients", a timeout under load) is retried with jittered
back-off for up to a minute instead of failing the trial (docs/explanation/scale.md).
"""

from __future__ import annotations

import functools
import hashlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout
from vaegrid.safeio import mount_type, refuse_link

URL_MAX_CHARS = 4096  # --storage: longer is no database URL (and would not be one line)
BUSY_TIMEOUT_S = 60  # SQLite: how long a writer waits for another's commit
CONNECT_TIMEOUT_S = 5  # PostgreSQL: an unreachable server is refused within this
READ_TIMEOUT_S = 60  # PostgreSQL: a reader's statement gives up after this
# PostgreSQL, client side: the longest a connection waits for any answer of the server (a
# server, or something posing as one, that stops answering). A reader's statement_timeout
# ends a real server's slow statement first; a writer may wait on another's locks longer.
ANSWER_TIMEOUT_S = {True: READ_TIMEOUT_S + 10, False: 600}
RETRY_S = 60  # PostgreSQL: how long a writer retries a connection (full, slow, restarting)
# PostgreSQL writers, per process: connections kept open, and in use at once at most (the
# threads of a Dask worker wait their turn). Optuna's storage, used at a trial's start and
# end only, keeps one.
POOL_KEPT, POOL_MAX = 2, 6
OPTUNA_POOL_KEPT, OPTUNA_POOL_MAX = 1, 2
POOL_RECYCLE_S = 600  # a kept connection is replaced after this long (PgBouncer's lifetime)
# Filesystems on which SQLite's locking cannot be trusted (SQLite FAQ 5, "How To Corrupt").
NETWORK_FILESYSTEMS = frozenset(
    [
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph", "glusterfs",
        "fuse.glusterfs", "lustre", "gpfs", "beegfs", "9p", "afs", "fuse.sshfs",
        "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.rclone",
    ]
)  # fmt: skip


@dataclass(frozen=True)
class Database:
    """A checked storage URL."""

    url: URL  # with the password, for connecting
    path: Path | None  # SQLite: the file

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def __str__(self) -> str:
        """What messages show: the SQLite file, or the URL without its user and password
        (``***@``) and without its options (``?password=...`` is one), as :func:`masked`."""
        if self.path is not None:
            return str(self.path)
        return _without_secrets(self.url.set(query={}).render_as_string(hide_password=True))

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        """The SQLite file ``path``. Its URL names the dialect only: every connection opens
        the exact path (a ``?`` or ``%41`` in a folder name is a character, never a URL's)."""
        return cls(URL.create("sqlite"), path.absolute())  # workers may start elsewhere

    @property
    def key(self) -> str:
        """What tells two databases apart (one Store per database and process)."""
        if self.path is not None:
            return f"sqlite:{self.path}"
        return self.url.render_as_string(hide_password=False)

    def optuna_url(self) -> str:
        """The URL Optuna's RDBStorage is given (SQLite: the dialect; the file comes from
        :meth:`optuna_engine_kwargs`'s connection factory)."""
        if self.path is not None:
            return "sqlite://"
        return self.url.render_as_string(hide_password=False)

    @classmethod
    def for_study(cls, layout: StudyLayout, storage: str | None = None) -> Database:
        """``--storage URL``, or by default the study folder's ``study.db``.

        Raises:
            InputError: not a URL, a dialect other than SQLite and PostgreSQL (psycopg 3),
                an in-memory SQLite database.
        """
        if storage is None:
            return cls.sqlite(layout.db)
        expected = "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        if not storage.isprintable() or len(storage) > URL_MAX_CHARS:
            raise InputError(
                f"--storage: a URL of {len(storage)} characters"
                + ("" if storage.isprintable() else " with control characters")
                + f"; {expected} (at most {URL_MAX_CHARS} characters)"
            )
        # Everything up to the last '@' before the options is a user and password, even one
        # holding '/' (a URL parser would take that for the path, and print the password).
        netloc = storage.partition("://")[2].split("?", 1)[0] if "://" in storage else ""
        if netloc.count("@") > 1:
            raise InputError(
                f"--storage: {masked(storage)} holds more than one '@' before the host; write "
                "an '@' inside a user name or password as %40"
            )
        try:
            url = make_url(storage)
            _ = url.port  # a port that is not a number is refused here, not at connect
        except (ArgumentError, ValueError):
            raise InputError(
                f"--storage: {masked(storage)} is not a database URL; {expected}"
            ) from None
        backend, _, driver = url.drivername.partition("+")  # no dialect loaded to look
        if backend == "sqlite":
            problem = (
                "another driver than Python's sqlite3" if driver not in ("", "pysqlite")
                else "a host" if url.host or url.username is not None
                or url.password is not None or url.port is not None or "@" in storage
                else "options (?...): vaegrid sets the file's options itself" if url.query
                else "no file" if not url.database or url.database == ":memory:"
                or url.database.startswith("file:")
                else None
            )  # fmt: skip
            if problem is not None:
                raise InputError(
                    f"--storage: {masked(storage)} names {problem}; expected sqlite:///PATH "
                    "(a file on a local disk)"
                )
            return cls.sqlite(Path(str(url.database)))
        if backend in ("postgresql", "postgres") and driver in ("psycopg", "psycopg2", ""):
            twice = sorted(k for k, v in url.query.items() if not isinstance(v, str))
            moved = sorted({"host", "port", "hostaddr"} & set(url.query))
            hosts = "," in (url.host or "")  # each tried in turn, each with its own timeout
            if twice or moved or hosts:
                what = (
                    f"{twice[0]} given twice" if twice
                    else f"{moved[0]} as an option" if moved
                    else "several hosts"
                )  # fmt: skip
                raise InputError(
                    f"--storage: {masked(storage)} names {what}; expected one server: "
                    "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
                )
            timeout = url.query.get("connect_timeout")
            if timeout is not None and not (
                isinstance(timeout, str) and timeout.isdigit() and 1 <= int(timeout) <= 600
            ):
                raise InputError(
                    f"--storage: connect_timeout = {str(timeout)[:40]!r} is not allowed; "
                    "expected whole seconds from 1 to 600 (0 would wait forever)"
                )
            # The same server whatever driver the URL names: vaegrid speaks psycopg 3.
            return cls(url.set(drivername="postgresql+psycopg"), None)
        raise InputError(
            f"--storage: {url.drivername!r} is not supported; expected sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )

    def check_location(self) -> None:
        """Refuse a SQLite file on a network filesystem (its locks do not hold there).

        Raises:
            InputError: naming the filesystem and what to use instead.
        """
        if not self.is_sqlite or self.path is None:
            return
        existing = self.path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        kind = mount_type(existing)
        if kind in NETWORK_FILESYSTEMS:
            raise InputError(
                f"{self.path}: is on a {kind} filesystem, where SQLite's locks do not hold "
                "across machines; keep the study database on a local disk, or use "
                "--storage postgresql://USER:PASSWORD@HOST/DATABASE"
            )

    def engine(self, readonly: bool = False) -> Engine:
        """An engine for vaegrid's tables (writers) or for reading only (no lock, no write).

        A server writer's connections are retried for :data:`RETRY_S` (a full or slow
        server must not fail a trial); a reader's are not: first contact with a server
        that is down must be one line within seconds.
        """
        if self.is_sqlite:
            assert self.path is not None
            path = self.path
            if readonly:
                return _read_transactions(
                    create_engine(
                        "sqlite://",
                        creator=lambda: connect_sqlite_read_only(path),
                        poolclass=NullPool,
                    )
                )
            return _harden_sqlite(create_engine("sqlite://", **self._sqlite_writer()))
        if readonly:  # a reader (status, report) is short-lived: nothing to keep
            return create_engine(
                self.url, poolclass=NullPool, creator=_pg_connector(self.url, True, 0.0)
            )
        return create_engine(self.url, **self._pg_writer(POOL_KEPT, POOL_MAX))

    def optuna_engine_kwargs(self) -> dict[str, Any]:
        """What Optuna's RDBStorage needs to connect the same way."""
        if self.is_sqlite:
            return self._sqlite_writer()
        return self._pg_writer(OPTUNA_POOL_KEPT, OPTUNA_POOL_MAX)

    def _pg_writer(self, kept: int, most: int) -> dict[str, Any]:
        """Engine arguments of a server writer: a bounded pool of checked connections.
        A thread that waits longer than RETRY_S for one of them meets SQLAlchemy's
        TimeoutError, a fault of the world (faults.py)."""
        return {
            "creator": _pg_connector(self.url, False, RETRY_S),
            "poolclass": QueuePool,
            "pool_size": kept,
            "max_overflow": most - kept,
            "pool_timeout": RETRY_S,
            "pool_pre_ping": True,
            "pool_recycle": POOL_RECYCLE_S,
        }

    def _sqlite_writer(self) -> dict[str, Any]:
        """Engine arguments that open the file itself (the path never passes through a URL),
        pooled as SQLAlchemy pools a file database."""
        path = str(self.path)

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)

        return {"creator": connect, "poolclass": QueuePool}

    def harden_optuna(self, engine: Engine) -> None:
        if self.is_sqlite:
            _harden_sqlite(engine)


def masked(url: str) -> str:
    """A URL from outside as a message shows it: whatever stands between ``://`` and the
    host's ``@`` (a user and password) replaced by ``***``, options (``?...``) dropped, one
    line of at most 200 characters."""
    return _shown(_without_secrets(url))


def _without_secrets(url: str) -> str:
    """``url`` with its user and password replaced by ``***`` and its options dropped."""
    scheme, sep, rest = url.partition("://")
    if sep:
        rest = rest.split("?", 1)[0]
        if "@" in rest:  # the last '@': a password may hold '/' or '@'
            rest = "***@" + rest.rsplit("@", 1)[1]
        url = scheme + sep + rest
    return url


def _shown(text: str) -> str:
    """A value from outside as a message shows it: one line, at most 200 characters."""
    text = repr(text)
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


def reason(e: Exception) -> str:
    """The database's own words ("attempt to write a readonly database"), not SQLAlchemy's."""
    orig = getattr(e, "orig", None)
    return str(orig or e).splitlines()[0]


def insert_if_absent(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING, the one upsert vaegrid needs, in both dialects: a
    statement made once per table and dialect, the rows its parameters."""
    if rows:
        session.execute(_insert_if_absent(session.get_bind().dialect.name, model), list(rows))


@functools.cache
def _insert_if_absent(dialect: str, model: Any) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    module = postgresql if dialect == "postgresql" else sqlite  # Core on the table: not the
    return module.insert(model.__table__).on_conflict_do_nothing()  # ORM's bulk insert (slow)


def _harden_sqlite(engine: Engine) -> Engine:
    """WAL, busy timeout and BEGIN IMMEDIATE on every connection of a SQLite writer."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi: sqlite3.Connection, _record: object) -> None:
        dbapi.isolation_level = None  # let the "begin" hook below open transactions
        dbapi.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        dbapi.execute("PRAGMA journal_mode = WAL")
        # Safe against a killed process in WAL mode; only a power cut can lose the last commit.
        dbapi.execute("PRAGMA synchronous = NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A read-then-write never fails with SQLITE_BUSY_SNAPSHOT when another worker
        # committed in between: the write lock is taken at BEGIN.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks must not be reused
    return engine


def _read_transactions(engine: Engine) -> Engine:
    """A SQLite reader whose transactions are real: Python's sqlite3 opens none for a
    SELECT, so two queries of one snapshot (Store.snapshot) would see two moments."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi: sqlite3.Connection, _record: object) -> None:
        dbapi.isolation_level = None  # the "begin" hook below opens transactions

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def connect_sqlite_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that writes nothing, not even SQLite's -shm/-wal files
    where avoidable."""
    refuse_link(path)
    if not path.is_file():
        raise sqlite3.OperationalError("no such file")
    # A cleanly closed WAL database has no -wal file: read it as immutable, which creates
    # no -shm/-wal files either. After a crash, or while a sweep writes, the -wal holds
    # commits: read through it (SQLite may then create an empty -shm beside it).
    clean = not path.with_name(path.name + "-wal").exists()
    mode = "ro&immutable=1" if clean else "ro"
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"
    con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    return con


def _pg_connector(url: URL, readonly: bool, retry_s: float) -> Callable[[], Any]:
    """psycopg 3 connections to ``url``: a short connect timeout, read-only if asked, and
    any failure to connect (a full server's "too many clients", a timeout under load, a
    restart) retried with jittered back-off for ``retry_s`` seconds rather than failed.
    The load test (bench/load_store.py) saw all three at 256 writers."""
    import psycopg

    params: dict[str, Any] = {
        k: v
        for k, v in url.translate_connect_args(username="user", database="dbname").items()
        if v is not None
    }
    params.update(url.query)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    # no server-side prepared statements: PgBouncer in transaction mode (before 1.21) hands
    # each transaction any server connection, where a statement prepared on another is not
    params.setdefault("prepare_threshold", None)
    params.setdefault("application_name", "vaegrid")
    if readonly:  # added to the URL's own options (a search_path, say), never replacing them;
        # a reader never waits long on a server that answers no more (a locked table)
        own = params.get("options")
        mine = f"-c default_transaction_read_only=on -c statement_timeout={READ_TIMEOUT_S * 1000}"
        params["options"] = " ".join(filter(None, [own, mine]))

    kind = _bounded_connection(ANSWER_TIMEOUT_S[readonly])

    def connect() -> Any:
        deadline = time.monotonic() + retry_s
        delay = 0.05
        while True:
            try:
                return kind.connect(**params)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)

    return connect


@functools.cache
def _bounded_connection(seconds: float) -> Any:
    """A psycopg connection class whose every wait on the server ends after ``seconds``:
    the connection is then closed (its state is unknown) and OperationalError says so.
    connect_timeout bounds the handshake; this bounds everything after it."""
    import psycopg

    class Bounded(psycopg.Connection):
        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            if len(args) < 2 and kwargs.get("timeout") is None:
                kwargs["timeout"] = seconds
            try:
                return super().wait(gen, *args, **kwargs)
            except psycopg.errors.OperationalError as e:
                if type(e).__name__ != "_WaitTimeout":
                    raise
                self.pgconn.finish()
                raise psycopg.OperationalError(
                    f"the server sent no answer within {seconds:g} s"
                ) from None

    return Bounded


@contextmanager
def pg_advisory_lock(db: Database, name: str) -> Iterator[bool]:
    """Try PostgreSQL's advisory lock for ``name``; yields whether it is held.

    The lock is a transaction's, on one dedicated connection whose transaction stays open
    for the whole block: the server releases it when that transaction ends, which it does
    when the connection ends, however the driver dies (no stale lock to guess about).
    A transaction's rather than a session's, so that PgBouncer in transaction mode keeps
    this client on one server connection for as long as the lock is held (a session's
    lock would stay behind on a server connection PgBouncer hands to others).
    """
    key = int.from_bytes(
        hashlib.sha256(f"vaegrid:{name}".encode()).digest()[:8], "big", signed=True
    )
    con = _pg_connector(db.url, False, 0.0)()  # first contact: refuse at once
    try:
        held = bool(con.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()[0])
        yield held
    finally:
        con.close()  # releases the lock with the session
