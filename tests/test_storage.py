"""Storage by URL, leases and the driver's heartbeat, without servers (fast), and the
leases on a PostgreSQL the slow test starts, where workers claim for real."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_inline
from servers import have_postgres, postgres

from vaegrid.cli import main
from vaegrid.db import engine as storage
from vaegrid.db.engine import Database
from vaegrid.db.store import Store
from vaegrid.errors import InputError
from vaegrid.layout import StudyLayout
from vaegrid.study.core import expand
from vaegrid.study.load import load_study


def test_storage_urls_are_checked_and_messages_never_show_the_password(tmp_path: Path) -> None:
    default = Database.for_study(StudyLayout(tmp_path / "seed"))
    assert default.is_sqlite and default.path == tmp_path / "seed" / "study.db"
    pg = Database.for_study(StudyLayout(tmp_path), "postgresql://me:s3cret@db.lab:5433/sweeps")
    assert pg.url.drivername == "postgresql+psycopg" and pg.path is None
    assert str(pg) == "postgresql+psycopg://***@db.lab:5433/sweeps"  # no user, no password
    assert Database.for_study(StudyLayout(tmp_path), "postgres://me@db/x").url.drivername == (
        "postgresql+psycopg"
    )
    refused = {
        "not a url": "is not a database URL",
        "mysql://me@db/x": "'mysql' is not supported",
        "sqlite://": "names no file",
        "sqlite:///:memory:": "names no file",
        "sqlite+pysqlcipher:///x.db": "names another driver than Python's sqlite3",
        "sqlite+aiosqlite:///x.db": "names another driver than Python's sqlite3",
        "sqlite://host/x.db": "names a host",
        "sqlite:///x.db?timeout=abc": "names options",
        "sqlite:///x.db?uri=true&mode=ro": "names options",
    }
    for url, message in refused.items():
        with pytest.raises(InputError, match=message):
            Database.for_study(StudyLayout(tmp_path), url)


def test_an_unreachable_server_is_one_line_exit_2_within_10_s(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://me:s3cret@127.0.0.1:1/sweeps"  # nothing listens on port 1
    argv = ["run", str(write_study()), "--results", str(tmp_path / "r"), "--devices", "cpu"]
    started = time.perf_counter()
    assert main([*argv, "--data-dir", str(mnist_root), "--storage", url]) == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "127.0.0.1:1/sweeps" in err and "s3cret" not in err, err
    assert "Connection refused" in err
    assert not (tmp_path / "r").exists()
    assert main(["status", str(tmp_path / "r" / "tiny"), "--storage", url]) == 2
    assert "s3cret" not in capsys.readouterr().err


def test_sqlite_on_a_network_filesystem_is_refused_pointing_to_postgres(
    write_study: Callable[..., Path],
    mnist_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "mount_type", lambda path: "nfs4")
    argv = ["run", str(write_study()), "--results", str(tmp_path / "r"), "--devices", "cpu"]
    assert main([*argv, "--data-dir", str(mnist_root)]) == 2
    err = capsys.readouterr().err
    assert "is on a nfs4 filesystem" in err and "--storage postgresql://" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _store(write_study: Callable[..., Path], tmp_path: Path) -> tuple[Store, str]:
    study = load_study(write_study())
    store = Store(tmp_path / "study.db")
    store.sync_study(study, expand(study), 1)
    return store, expand(study)[0].key


def _leases(store: Store, other: Store, key: str) -> None:
    """A lease held, renewed and taken over only once it lapses (``other``: a second
    worker's store, or the same)."""
    assert store.claim(key, "a", ttl=0.5)
    assert not other.claim(key, "b", ttl=0.5)  # a's lease is live
    assert store.claim(key, "a", ttl=0.5)  # renewed by its holder
    time.sleep(0.6)
    assert other.claim(key, "b", ttl=30)  # a died: its lease lapsed
    assert not store.claim(key, "a", ttl=30)  # and a, back, does not get it again
    store.release(key, "a")  # releasing what one does not hold changes nothing
    assert not store.claim(key, "c", ttl=30)
    other.release(key, "b")
    assert store.claim(key, "c", ttl=30)


def _raced(stores: list[Store], keys: list[str]) -> list[set[str]]:
    """Each store claims every key at once, in its own thread and order; what each won."""
    won: list[set[str]] = [set() for _ in stores]
    start = threading.Barrier(len(stores))

    def claim(i: int) -> None:
        start.wait()
        for key in keys if i % 2 == 0 else reversed(keys):
            if stores[i].claim(key, f"w{i}", ttl=30):
                won[i].add(key)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def _one_winner_each(stores: list[Store]) -> None:
    """Two workers claim 30 keys at once, 15 of them lapsed: each key is won once."""
    keys = [f"{i:012x}" for i in range(30)]
    for k in keys[:15]:
        assert stores[0].claim(k, "dead", ttl=-1.0)
    first, second = _raced(stores, keys)
    assert first.isdisjoint(second) and first | second == set(keys)


def test_a_lease_is_held_renewed_and_taken_over_only_once_it_lapses(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    store, key = _store(write_study, tmp_path)
    try:
        _leases(store, store, key)
        other = Store(tmp_path / "study.db")  # a second worker
        try:
            _one_winner_each([store, other])
        finally:
            other.close()
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.skipif(not have_postgres(), reason="needs PostgreSQL 15 (initdb, pg_ctl)")
def test_on_postgresql_a_lease_has_one_holder_and_is_taken_over_only_once_it_lapses(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    """Where workers claim for real: two workers' stores on one server, as on SQLite, and
    two claiming 30 keys at once (15 of them lapsed) win each key once between them."""
    study = load_study(write_study())
    with postgres() as url:
        stores = [Store(Database.for_study(StudyLayout(tmp_path), url)) for _ in range(2)]
        try:
            stores[0].sync_study(study, expand(study), 1)
            _leases(stores[0], stores[1], expand(study)[0].key)
            _one_winner_each(stores)
        finally:
            for store in stores:
                store.close()


def test_the_driver_heartbeat_says_who_lives_and_ends_with_it(
    write_study: Callable[..., Path], tmp_path: Path
) -> None:
    store, _ = _store(write_study, tmp_path)
    try:
        assert store.live_driver(20) is None
        store.driver_beat("tiny", "t1", 42, "node7")
        live = store.live_driver(20)
        assert live is not None and (live.token, live.pid, live.host) == ("t1", 42, "node7")
        store.driver_gone("tiny", "another driver's token")
        assert store.live_driver(20) is not None
        store.driver_gone("tiny", "t1")
        assert store.live_driver(20) is None
    finally:
        store.close()


def test_a_folder_name_is_never_parsed_as_a_url(
    write_study: Callable[..., Path], mnist_root: Path, tmp_path: Path
) -> None:
    import sqlite3

    victim = tmp_path / "victim.db"  # an unrelated SQLite file beside the results
    with sqlite3.connect(victim) as con:
        con.execute("CREATE TABLE mine (x INTEGER)")
    before = victim.read_bytes()
    study = write_study(epochs=1)  # the paths are under test: one epoch is enough
    for results in (tmp_path / "victim.db?x", tmp_path / "p%41th", tmp_path / "a#b"):
        if results.name == "victim.db?x":  # through the CLI: its workers open the database
            argv = ["run", str(study), "--results", str(results), "--data-dir", str(mnist_root)]
            assert main([*argv, "--devices", "cpu", "--no-progress"]) == 0
        else:
            assert run_inline(study, results, mnist_root) == 0
        assert (results / "tiny" / "study.db").is_file()
        store = Store.reader(results / "tiny" / "study.db")
        try:
            assert len(store.trials()) == 4
        finally:
            store.close()
        assert main(["status", str(results / "tiny")]) == 0
    assert victim.read_bytes() == before
    assert not (tmp_path / "pAth").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["victim.db", "victim.db?x", "p%41th", "a#b", "study.toml"]
    )


def test_a_relative_results_folder_gives_workers_an_absolute_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for db in (
        Database.for_study(StudyLayout(Path("results") / "seed")),
        Database.for_study(StudyLayout(Path("x")), "sqlite:///rel/study.db"),
    ):
        assert db.path is not None and db.path.is_absolute()
        assert str(db.path).startswith(str(tmp_path))


def test_a_bad_storage_url_is_one_line_and_never_shows_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = StudyLayout(tmp_path)
    refused = {
        "postgresql://me:s3cret@host:abc/db": "is not a database URL",
        "postgresql://me:s3cret@[::1/db": "is not a database URL",
        "postgresql://me:s3@cret@host/db": "holds more than one '@'",
        "postgresql://me@host/db?connect_timeout=0": "connect_timeout = '0' is not allowed",
        "postgresql://me:s3cret@h1,h2,h3/db": "names several hosts",
        "postgresql://me@host/db?connect_timeout=abc": "connect_timeout = 'abc' is not allowed",
        "postgresql://me:s3cret@host/" + "x" * 100_000: "a URL of 100028 characters",
        "postgresql://me:s3cret@host/db\nsecond line": "with control characters",
    }
    for url, message in refused.items():
        with pytest.raises(InputError, match=message) as e:
            Database.for_study(layout, url)
        text = str(e.value)
        assert "s3cret" not in text and "cret" not in text and "\n" not in text, text
        assert len(text) < 400
    shown = str(Database.for_study(layout, "postgresql://me@db.lab/x?password=s3cret"))
    assert shown == "postgresql+psycopg://***@db.lab/x"
    # A schema chosen with options stays chosen on read-only connections too.
    import psycopg

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(
        psycopg.Connection, "connect", classmethod(lambda cls, **kw: seen.append(kw))
    )
    url = "postgresql://me@db.lab/x?options=-csearch_path%3Ds1"
    for readonly in (False, True):
        storage._pg_connector(Database.for_study(layout, url).url, readonly, 0.0)()
    assert seen[0]["options"] == "-csearch_path=s1"
    assert str(seen[1]["options"]).startswith(
        "-csearch_path=s1 -c default_transaction_read_only=on"
    )


def test_load_never_shows_the_password_of_its_url(tmp_path: Path) -> None:
    import vaegrid

    with pytest.raises(InputError) as e:
        vaegrid.load("postgresql://me:s3cret@127.0.0.1:1/x", "nope")
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize(
    "address", ["", "garbage", "inproc://x", "tcp://h:abc", "tcp://h:0", "tls://h:8786",
                "ucx://h:8786", "tcp://h:8786/x", "tcp://" + "h" * 300 + ":1", "PBS"],
)  # fmt: skip
def test_a_cluster_address_that_is_no_scheduler_address_is_one_line_and_exit_2(
    address: str,
    write_study: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["run", str(write_study()), "--results", str(tmp_path / "r"), "--cluster", address]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "or a Dask scheduler's address tcp://HOST:PORT" in err
    assert "expected a batch scheduler (slurm, pbs, sge, lsf, htcondor, oar: lowercase)" in err
    assert len(err) < 500 and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_port_that_accepts_and_never_answers_is_refused_within_20_s(
    write_study: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nothing ever answers
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        argv = ["run", str(write_study()), "--results", str(tmp_path / "r"), "--cluster", address]
        started = time.perf_counter()
        assert main(argv) == 2
        assert time.perf_counter() - started < 20
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach a Dask scheduler" in err, err


def test_a_storage_file_that_is_no_database_file_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for url in ("sqlite:////dev/null", f"sqlite:///{tmp_path}"):
        assert main(["status", str(tmp_path / "r" / "tiny"), "--storage", url]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a study database file" in err, err


def _mute_postgres(listener: socket.socket, stop: threading.Event) -> None:
    """Completes PostgreSQL's handshake (no TLS, no password), then never answers."""
    held = []
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            con, _ = listener.accept()
        except TimeoutError:
            continue
        held.append(con)
        con.settimeout(5)
        while True:  # TLS and GSS requests are declined; the startup message is answered
            size = int.from_bytes(con.recv(4), "big")
            body = con.recv(size - 4)
            if int.from_bytes(body[:4], "big") in (80877103, 80877104):
                con.sendall(b"N")
                continue
            break
        ok = b"R" + (8).to_bytes(4, "big") + (0).to_bytes(4, "big")
        key = b"K" + (12).to_bytes(4, "big") + (1).to_bytes(4, "big") + (2).to_bytes(4, "big")
        con.sendall(ok + key + b"Z" + (5).to_bytes(4, "big") + b"I")
    for con in held:
        con.close()


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_server_that_stops_answering_after_the_handshake_is_one_line_within_the_bound(
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(storage.ANSWER_TIMEOUT_S, True, 2)
    monkeypatch.setitem(storage.ANSWER_TIMEOUT_S, False, 2)
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server = threading.Thread(target=_mute_postgres, args=(listener, stop), daemon=True)
        server.start()
        url = f"postgresql://me:s3cret@127.0.0.1:{listener.getsockname()[1]}/sweeps"
        started = time.perf_counter()
        try:
            code = main([command, str(tmp_path / "r" / "tiny"), "--storage", url])
        finally:
            stop.set()
            server.join()
    assert code == 2 and time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no answer within 2 s" in err and "s3cret" not in err, err
