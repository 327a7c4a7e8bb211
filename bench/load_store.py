"""How much does the study database take? A load test of SQLite and PostgreSQL, and the
driver's overhead per trial on the local pool and on Dask.

Section 1, the store (no training). Each simulated writer runs trials as a real worker
does: ``start_trial`` (the driver's write), ``begin_run``, 15 x ``record_epoch`` (one
every ``--epoch-s`` seconds, default 1 s: a fast GPU), ``finish_run`` with a completed
result. On PostgreSQL each trial also holds a lease as a cluster worker does: ``claim``
before the run, then a watcher thread that renews it and reads the driver's heartbeat
(``live_driver``) every 5 s, and ``release`` at the end. Writers are laid out as cluster
workers are: P processes, each with ONE ``Store`` shared by its T threads. Every
configuration (16, 64, 256 writers) runs on a fresh database: (a) SQLite, the default
``study.db`` in a temporary folder; (b) PostgreSQL 15 with its default
``max_connections = 100`` (``tests/servers.py``). Measured per configuration: epoch rows
committed per second (``vg_epoch`` rows, two per epoch, over the window from the first
to the last committed epoch) next to the rate offered; p50 / p99 / max wall time of
``record_epoch`` (what a worker waits for each epoch: vaegrid's commit, then Optuna's);
every exception, by message; lost rows (rows expected minus rows in ``vg_epoch`` at the
end); on PostgreSQL the peak of open ``vaegrid`` connections (``pg_stat_activity``
sampled every 0.2 s by a monitor thread) and the connections the server refused with
"too many clients" (counted in its log; vaegrid retries those for up to 60 s). The
baseline, in the same run: one writer alone on an idle database, each operation's wall
time and its transactions (on PostgreSQL, with NullPool, each one a new connection).
A configuration has a time limit (15 epochs at ``--epoch-s`` plus 30 s): writers still
running then abandon their trials as a killed worker would (no ``finish_run``), and the
table counts them as "cut".

Section 2, the driver. A study of many tiny 1-epoch trials on synthetic MNIST
(``tests/conftest.py``'s ``make_mnist``) runs once with the local pool (2 loky workers,
SQLite) and once on a Dask cluster (a scheduler and two ``dask worker`` processes with
``--resources vaegrid=1``) with the study in PostgreSQL. From ``vg_run``: the gap between
one run's end and the next run's start on the same worker process (the driver's round
trip per trial, plus the worker's own bookkeeping around a run), mean and p90, and the
trials per second.

Everything runs on 127.0.0.1; every loop is bounded in count and in time. The machine's
load average is printed with each figure: load generator, servers and any other work
share the same cores, so on a small machine these are lower bounds of capacity.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_mnist  # noqa: E402
from servers import dask_cluster, postgres  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from vaegrid.db.engine import Database  # noqa: E402
from vaegrid.db.schema import EpochRow  # noqa: E402
from vaegrid.db.store import Store  # noqa: E402

try:
    from vaegrid.run.leases import DRIVER_TIMEOUT_S, LEASE_S
except ImportError:  # a baseline's vaegrid (before run/leases.py)
    from vaegrid.run.worker import DRIVER_TIMEOUT_S, LEASE_S  # type: ignore[attr-defined,no-redef]
from vaegrid.study.core import Study, TrialConfig, expand  # noqa: E402
from vaegrid.study.load import parse_study  # noqa: E402
from vaegrid.train import provenance  # noqa: E402
from vaegrid.train.records import EpochRecord, Metrics, TrialResult  # noqa: E402

EPOCHS = 15  # the seed study's epochs per trial
LAYOUTS = ((4, 4), (8, 8), (16, 16))  # (processes, threads per process): 16, 64, 256 writers
SAMPLE_S = 0.2  # pg_stat_activity sampling period
T = TypeVar("T")


# -- section 1: the store ------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One configuration: where the database is, how many writers, how fast."""

    backend: str  # "sqlite" or "postgresql"
    processes: int
    threads: int
    trials: int  # trials per writer
    epoch_s: float  # seconds of "training" before each record_epoch
    study_dir: str
    storage: str | None  # None: study.db in study_dir
    deadline: float  # unix time after which writers abandon their trials (as if killed)

    @property
    def writers(self) -> int:
        return self.processes * self.threads


@dataclass
class Stats:
    """What one writer thread saw; merged per process, then per configuration."""

    latency: dict[str, list[float]] = field(default_factory=dict)  # op -> seconds
    commits: list[float] = field(default_factory=list)  # unix time each record_epoch returned
    errors: list[str] = field(default_factory=list)  # "op: Type: first line"
    abandoned: int = 0  # trials cut off by the configuration's time limit

    def merge(self, other: Stats) -> None:
        for op, values in other.latency.items():
            self.latency.setdefault(op, []).extend(values)
        self.commits.extend(other.commits)
        self.errors.extend(other.errors)
        self.abandoned += other.abandoned

    def timed(self, op: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)`` timed under ``op``; an exception is recorded and gives None."""
        start = time.perf_counter()
        try:
            return fn(*args)
        except Exception as e:
            line = (str(e).strip().splitlines() or [""])[0]
            self.errors.append(f"{op}: {type(e).__name__}: {line[:200]}")
            return None
        finally:
            self.latency.setdefault(op, []).append(time.perf_counter() - start)


def bench_study(n_trials: int, epochs: int = EPOCHS, name: str = "load") -> Study:
    """A study whose grid has at least ``n_trials`` distinct trials (fewer than
    ``n_trials`` + 1000) of ``epochs`` epochs of nothing."""
    hidden = min(n_trials, 1000)
    raw = {
        "name": name,
        "train": {"epochs": epochs, "batch_size": 10},
        "data": {"limit": 1000},
        "grid": {
            "hidden": list(range(1, hidden + 1)),
            "latent": list(range(1, math.ceil(n_trials / hidden) + 1)),
            "lr": [1e-3],
            "clip": [1.0],
        },
    }
    return parse_study(raw, source="<load_store>", default_name=name)


def fake_epoch(epoch: int, seconds: float, rng: random.Random) -> EpochRecord:
    """Numbers like a seed-study epoch: a negative ELBO falling from ~200 to ~100 nats."""

    def metrics(offset: float) -> Metrics:
        kl = 20 + 5 * rng.random()
        elbo = 100 + 100 * math.exp(-epoch / 3) + offset + rng.gauss(0, 1)
        return Metrics(elbo, elbo - kl, kl)

    return EpochRecord(epoch, metrics(0.0), metrics(2.0), seconds)


def _lease(store: Store, key: str, owner: str, done: threading.Event, stats: Stats) -> None:
    """The cluster worker's watcher: renew the lease, read the driver's heartbeat."""
    while not done.wait(LEASE_S / 3):
        stats.timed("claim", store.claim, key, owner, LEASE_S)
        stats.timed("live_driver", store.live_driver, DRIVER_TIMEOUT_S)


def _writer(
    spec: Spec, store: Store, study: Study, cfgs: Sequence[TrialConfig], seed: int
) -> Stats:
    """One worker thread: its trials, one after the other, as ``worker.execute`` runs them."""
    stats, rng = Stats(), random.Random(seed)
    server = spec.backend != "sqlite"
    host = provenance.host()
    time.sleep(rng.uniform(0, spec.epoch_s))  # real workers do not start in lockstep
    for cfg in cfgs:
        if time.time() > spec.deadline:
            stats.abandoned += 1
            continue
        trial_id = stats.timed("start_trial", store.start_trial, study, cfg)
        if trial_id is None:
            continue
        owner = f"{host}:{os.getpid()}:{threading.get_ident()}"
        done = threading.Event()
        watcher = None
        if server:
            stats.timed("claim", store.claim, cfg.key, owner, LEASE_S)
            watcher = threading.Thread(target=_lease, args=(store, cfg.key, owner, done, stats))
            watcher.start()
        try:
            run_id = stats.timed(
                "begin_run", store.begin_run, cfg.key, "cpu", os.getpid(), "fake", host, {}
            )
            history = []
            for epoch in range(1, EPOCHS + 1):
                if time.time() > spec.deadline:
                    stats.abandoned += 1
                    run_id = None  # dropped, as by a killed worker: no finish_run
                    break
                time.sleep(spec.epoch_s * rng.uniform(0.95, 1.05))
                record = fake_epoch(epoch, spec.epoch_s, rng)
                history.append(record)
                start = len(stats.errors)
                stats.timed("record_epoch", store.record_epoch, cfg.key, trial_id, record, "fake")
                if len(stats.errors) == start:
                    stats.commits.append(time.time())
            if run_id is not None:
                result = TrialResult("completed", history)
                stats.timed("finish_run", store.finish_run, cfg.key, run_id, result, None)
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
                stats.timed("release", store.release, cfg.key, owner)
    return stats


def _process(spec: Spec, index: int, start: Any, out: Any) -> None:
    """One worker process: one Store shared by ``spec.threads`` writer threads."""
    store = Store(Database.for_study(Path(spec.study_dir), spec.storage))
    store.optuna  # noqa: B018 - Optuna's storage opens here, not on the clock
    study = bench_study(spec.writers * spec.trials)
    grid = expand(study)
    results: list[Stats] = [Stats() for _ in range(spec.threads)]

    def run(t: int) -> None:
        w = index * spec.threads + t
        mine = grid[w * spec.trials : (w + 1) * spec.trials]
        try:
            results[t] = _writer(spec, store, study, mine, seed=w)
        except Exception as e:  # a bug of the bench itself: still reported
            results[t].errors.append(f"writer: {type(e).__name__}: {e}")

    start.wait()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(spec.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    total = Stats()
    for r in results:
        total.merge(r)
    store.close()
    out.put(total)


class PgMonitor:
    """Samples the server's open vaegrid connections every 0.2 s from its own connection."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.con = psycopg.connect(url, autocommit=True, application_name="vaegrid-bench")
        self.peak = self.peak_all = 0
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        data = self.con.execute("SHOW data_directory").fetchone()
        self.log = Path(data[0]).parent / "log" if data else None  # tests/servers.py's layout

    def refused(self) -> int:
        """'too many clients' refusals in the server's log so far."""
        if self.log is None or not self.log.exists():
            return -1
        return self.log.read_text(errors="replace").count("too many clients")

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            row = self.con.execute(
                "SELECT count(*) FILTER (WHERE application_name = 'vaegrid'), count(*) "
                "FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
            if row:
                self.peak, self.peak_all = max(self.peak, row[0]), max(self.peak_all, row[1])
                self.samples += 1

    def __enter__(self) -> PgMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.con.close()


@dataclass
class Outcome:
    spec: Spec
    stats: Stats
    rows: int
    expected: int
    wall: float
    load: tuple[float, float]  # 1-min load average before and after
    peak_conns: int | None = None
    peak_all: int | None = None
    refused: int | None = None

    def rows_per_s(self) -> float:
        c = sorted(self.stats.commits)
        return 2 * (len(c) - 1) / (c[-1] - c[0]) if len(c) > 1 and c[-1] > c[0] else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def run_config(spec: Spec, pg_url: str | None) -> Outcome:
    """Set up a fresh study database, run the writers, count what landed."""
    study = bench_study(spec.writers * spec.trials)
    grid = expand(study)[: spec.writers * spec.trials]
    db = Database.for_study(Path(spec.study_dir), spec.storage)
    setup = Store(db)
    setup.sync_study(study, grid, spec.writers)
    setup.close()  # nothing open across the fork

    ctx = mp.get_context("fork")  # children inherit the imports: no 16 x import of optuna
    start, out = ctx.Barrier(spec.processes + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_process, args=(spec, i, start, out)) for i in range(spec.processes)
    ]
    for p in procs:
        p.start()
    load0 = os.getloadavg()[0]
    monitor = PgMonitor(pg_url) if pg_url else None
    refused0 = monitor.refused() if monitor else 0
    stats = Stats()
    with monitor or _nothing():
        t0 = time.time()
        start.wait(timeout=120)
        for _ in procs:  # before join: a child blocks on a full queue until it is read
            remaining = max(1.0, spec.deadline + 75 - time.time())  # + in-flight retries
            try:
                stats.merge(out.get(timeout=remaining))
            except Exception as e:
                stats.errors.append(f"bench: a writer process gave no result ({e!r})")
                break
        wall = time.time() - t0
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
            stats.errors.append(f"bench: writer process {p.pid} killed at the deadline")
        elif p.exitcode:
            stats.errors.append(f"bench: writer process {p.pid} exited {p.exitcode}")
    reader = Store.reader(db)
    with reader.session() as s:
        rows = s.scalar(select(func.count()).select_from(EpochRow)) or 0
    reader.close()
    outcome = Outcome(
        spec,
        stats,
        rows,
        spec.writers * spec.trials * EPOCHS * 2,
        wall,
        (load0, os.getloadavg()[0]),
    )
    if monitor is not None:
        outcome.peak_conns, outcome.peak_all = monitor.peak, monitor.peak_all
        outcome.refused = monitor.refused() - refused0
    return outcome


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _new_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + "/" + name


@dataclass
class OpCost:
    """One operation of a trial's life, alone: one writer, nothing else running."""

    calls: int = 0
    transactions: int = 0  # BEGINs on vaegrid's and Optuna's engines
    connections: int = 0  # new DBAPI connections (PostgreSQL, NullPool: one per transaction)
    seconds: float = 0.0


def probe(backend: str, study_dir: Path, storage: str | None) -> dict[str, OpCost]:
    """The baseline: what each operation of one trial costs on an idle database."""
    from sqlalchemy import event

    study = bench_study(1)
    cfg = expand(study)[0]
    store = Store(Database.for_study(study_dir, storage))
    store.sync_study(study, [cfg], 1)
    costs: dict[str, OpCost] = {}
    current = [""]

    def on_begin(*_: object) -> None:
        costs[current[0]].transactions += 1

    def on_connect(*_: object) -> None:
        costs[current[0]].connections += 1

    for engine in (store.engine, store.optuna.engine):
        event.listen(engine, "begin", on_begin)
        event.listen(engine, "connect", on_connect)

    def op(name: str, fn: Callable[..., T], *args: Any) -> T:
        current[0] = name
        cost = costs.setdefault(name, OpCost())
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            cost.seconds += time.perf_counter() - start
            cost.calls += 1

    rng, owner = random.Random(0), "probe"
    trial_id = op("start_trial", store.start_trial, study, cfg)
    if backend != "sqlite":
        op("claim", store.claim, cfg.key, owner, LEASE_S)
        op("live_driver", store.live_driver, DRIVER_TIMEOUT_S)
    run_id = op("begin_run", store.begin_run, cfg.key, "cpu", os.getpid(), "fake", "h", {})
    history = [fake_epoch(e, 0.0, rng) for e in range(1, EPOCHS + 1)]
    for record in history:
        op("record_epoch", store.record_epoch, cfg.key, trial_id, record, "fake")
    assert run_id is not None
    op("finish_run", store.finish_run, cfg.key, run_id, TrialResult("completed", history), None)
    if backend != "sqlite":
        op("release", store.release, cfg.key, owner)
    store.close()
    return costs


def print_probe(backend: str, costs: dict[str, OpCost]) -> None:
    print(f"\n{backend}, one writer alone (the baseline): per call")
    print(f"  {'op':<13} {'calls':>5} {'transactions':>12} {'connections':>11} {'ms':>7}")
    for name, c in costs.items():
        print(
            f"  {name:<13} {c.calls:>5} {c.transactions / c.calls:>12.1f} "
            f"{c.connections / c.calls:>11.1f} {c.seconds / c.calls * 1000:>7.1f}"
        )
    total = sum(c.transactions for c in costs.values())
    print(f"  one {EPOCHS}-epoch trial: {total} transactions")


def store_section(args: argparse.Namespace) -> list[Outcome]:
    layouts = [
        LAYOUTS[i] for i in range(len(LAYOUTS)) if LAYOUTS[i][0] * LAYOUTS[i][1] in args.writers
    ]
    budget = args.trials * EPOCHS * (args.epoch_s * 1.05 + 0.1) + 30  # per configuration
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="vaegrid-load-") as tmp, postgres() as server:
        for backend in ("sqlite", "postgresql"):
            probe_dir = Path(tmp) / f"{backend}-probe" / "load"
            probe_dir.mkdir(parents=True)
            url = _new_database(server, "probe") if backend == "postgresql" else None
            print_probe(backend, probe(backend, probe_dir, url))
            print(flush=True)
            for n, (procs, threads) in enumerate(layouts):
                study_dir = Path(tmp) / f"{backend}{n}" / "load"
                study_dir.mkdir(parents=True)
                url = _new_database(server, f"load{n}") if backend == "postgresql" else None
                spec = Spec(
                    backend,
                    procs,
                    threads,
                    args.trials,
                    args.epoch_s,
                    str(study_dir),
                    url,
                    time.time() + budget,
                )
                print(f"  {backend} {procs}x{threads} ...", end="", flush=True)
                o = run_config(spec, url)
                print(f" {o.wall:.1f} s, load {o.load[0]:.1f} -> {o.load[1]:.1f}", flush=True)
                outcomes.append(o)
    return outcomes


def print_store(outcomes: Sequence[Outcome], epoch_s: float) -> None:
    def ms(x: float) -> str:
        return f"{x * 1000:.0f}" if not math.isnan(x) else "-"

    print(
        f"\nrecord_epoch under load: {EPOCHS} epochs per trial, one per {epoch_s:g} s per "
        "writer; rows = vg_epoch rows (2 per epoch); latencies in ms"
    )
    head = (
        f"{'backend':<10} {'writers':>7} {'PxT':>5} {'offered':>8} {'rows/s':>7} "
        f"{'p50':>6} {'p99':>6} {'max':>6} {'start p50':>9} {'start p99':>9} "
        f"{'errors':>6} {'cut':>4} {'missing':>7} {'lost':>4} {'peak conn':>9} {'refused':>7} "
        f"{'load':>9}"
    )
    print(head)
    print("-" * len(head))
    for o in outcomes:
        s, lat = o.spec, o.stats.latency
        rec, start = lat.get("record_epoch", []), lat.get("start_trial", [])
        offered = 2 * s.writers / epoch_s if epoch_s else math.inf
        peak = f"{o.peak_conns}/{o.peak_all}" if o.peak_conns is not None else "-"
        refused = str(o.refused) if o.refused is not None else "-"
        print(
            f"{s.backend:<10} {s.writers:>7} {f'{s.processes}x{s.threads}':>5} {offered:>8.0f} "
            f"{o.rows_per_s():>7.0f} {ms(percentile(rec, 50)):>6} {ms(percentile(rec, 99)):>6} "
            f"{ms(max(rec, default=math.nan)):>6} {ms(percentile(start, 50)):>9} "
            f"{ms(percentile(start, 99)):>9} {len(o.stats.errors):>6} {o.stats.abandoned:>4} "
            f"{o.expected - o.rows:>7} {max(0, 2 * len(o.stats.commits) - o.rows):>4} "
            f"{peak:>9} {refused:>7} "
            f"{f'{o.load[0]:.1f}-{o.load[1]:.1f}':>9}"
        )
    print(
        "offered: rows/s the writers would commit at zero latency; cut: trials abandoned at the\n"
        "time limit; missing: rows expected minus rows in vg_epoch; lost: rows of epochs whose\n"
        "record_epoch returned without error but are not in vg_epoch (must be 0); peak conn:\n"
        "vaegrid's / all client backends (the monitor's own included), sampled every 0.2 s;\n"
        "refused: 'too many clients' in the server log (each retried by vaegrid)"
    )
    by = {(o.spec.backend, o.spec.writers): o for o in outcomes}
    print("\nPostgreSQL / SQLite")
    for w in sorted({o.spec.writers for o in outcomes}):
        pg, lite = by.get(("postgresql", w)), by.get(("sqlite", w))
        if pg is None or lite is None:
            continue
        a, b = pg.stats.latency.get("record_epoch", []), lite.stats.latency.get("record_epoch", [])
        ratio = [
            pg.rows_per_s() / lite.rows_per_s() if lite.rows_per_s() else math.nan,
            percentile(a, 50) / percentile(b, 50),
            percentile(a, 99) / percentile(b, 99),
            max(a, default=math.nan) / max(b, default=math.nan),
        ]
        print(
            f"  {w:>4} writers: rows/s x{ratio[0]:.2f}   p50 x{ratio[1]:.2f}   "
            f"p99 x{ratio[2]:.2f}   max x{ratio[3]:.2f}"
        )
    for o in outcomes:
        for op in ("begin_run", "finish_run", "claim", "live_driver", "release"):
            values = o.stats.latency.get(op, [])
            if values and percentile(values, 99) > 1.0:
                print(
                    f"  {o.spec.backend} {o.spec.writers}: {op} p99 "
                    f"{ms(percentile(values, 99))} ms, max {ms(max(values))} ms"
                )
        for text, n in Counter(o.stats.errors).most_common(10):
            print(f"  {o.spec.backend} {o.spec.writers} error x{n}: {text}")


# -- section 2: the driver ------------------------------------------------------------------

DRIVER_STUDY = """
name = "tiny"
[data]
limit = {limit}
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 1
batch_size = 50
[grid]
hidden = [8]
latent = [2]
lr = [{lrs}]
clip = [1.0]
"""


@dataclass
class DriverOutcome:
    name: str
    trials: int
    wall: float  # the whole `vaegrid run` command
    span: float  # first run's start to last run's end
    gaps: list[float]  # end of a run to the next start on the same worker
    runs: list[float]  # each run's own length
    rc: int
    load: tuple[float, float]


def _driver_run(name: str, argv: list[str], db: Database, n: int) -> DriverOutcome:
    load0 = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "vaegrid"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.time() - t0
    if proc.returncode:
        print(
            f"  {name}: vaegrid run exited {proc.returncode}:\n{proc.stdout[-2000:]}"
            f"{proc.stderr[-2000:]}"
        )
    reader = Store.reader(db)
    runs = reader.runs()
    reader.close()
    by_worker: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_worker.setdefault(r["worker"], []).append(r)
    gaps = []
    for rs in by_worker.values():
        rs.sort(key=lambda r: r["started"])
        gaps += [b["started"] - a["ended"] for a, b in itertools.pairwise(rs) if a["ended"]]
    ended = [r["ended"] for r in runs if r["ended"]]
    span = max(ended) - min(r["started"] for r in runs) if ended else math.nan
    lengths = [r["ended"] - r["started"] for r in runs if r["ended"]]
    print(f"  {name}: {len(runs)} runs on {len(by_worker)} workers, {wall:.1f} s", flush=True)
    return DriverOutcome(
        name, n, wall, span, gaps, lengths, proc.returncode, (load0, os.getloadavg()[0])
    )


def driver_section(args: argparse.Namespace) -> list[DriverOutcome]:
    n = args.driver_trials
    lrs = ", ".join(f"{1e-3 * (1 + i / n):.8g}" for i in range(n))
    out = []
    with tempfile.TemporaryDirectory(prefix="vaegrid-driver-") as tmp_name:
        tmp = Path(tmp_name)
        data = make_mnist(tmp / "data", n_train=400, n_test=100)
        study = tmp / "tiny.toml"
        study.write_text(DRIVER_STUDY.format(limit=300, lrs=lrs))
        common = ["run", str(study), "--data-dir", str(data), "--no-progress"]
        results = tmp / "local"
        out.append(
            _driver_run(
                "local pool (loky, 2 workers), SQLite",
                [
                    *common,
                    "--results",
                    str(results),
                    "--devices",
                    "cpu",
                    "--workers-per-device",
                    "2",
                ],
                Database.for_study(results / "tiny"),
                n,
            )
        )
        with postgres() as url, dask_cluster() as cluster:
            for _ in range(2):
                cluster.add_worker("vaegrid=1", nthreads=1)
            cluster.wait_for(2)
            results = tmp / "dask"
            out.append(
                _driver_run(
                    "Dask (2 workers x 1 slot), PostgreSQL",
                    [
                        *common,
                        "--results",
                        str(results),
                        "--cluster",
                        cluster.address,
                        "--storage",
                        url,
                    ],
                    Database.for_study(results / "tiny", url),
                    n,
                )
            )
    return out


def print_driver(outcomes: Sequence[DriverOutcome]) -> None:
    print("\nDriver overhead per trial (1-epoch trials, hidden 8, latent 2, 180 train images)")
    head = (
        f"{'path':<40} {'trials':>6} {'trials/s':>8} {'gap mean':>8} {'gap p90':>8} "
        f"{'run mean':>8} {'wall s':>7} {'rc':>3} {'load':>9}"
    )
    print(head)
    print("-" * len(head))
    for o in outcomes:
        gap_mean = sum(o.gaps) / len(o.gaps) if o.gaps else math.nan
        run_mean = sum(o.runs) / len(o.runs) if o.runs else math.nan
        print(
            f"{o.name:<40} {o.trials:>6} {o.trials / o.span:>8.2f} {gap_mean * 1000:>6.0f}ms "
            f"{percentile(o.gaps, 90) * 1000:>6.0f}ms {run_mean * 1000:>6.0f}ms "
            f"{o.wall:>7.1f} {o.rc:>3} {f'{o.load[0]:.1f}-{o.load[1]:.1f}':>9}"
        )
    if len(outcomes) == 2 and outcomes[0].gaps and outcomes[1].gaps:
        a, b = outcomes[1], outcomes[0]
        gap_a, gap_b = sum(a.gaps) / len(a.gaps), sum(b.gaps) / len(b.gaps)
        print(
            f"Dask / local: gap mean x{gap_a / gap_b:.2f}, "
            f"trials/s x{(a.trials / a.span) / (b.trials / b.span):.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--epoch-s",
        type=float,
        default=1.0,
        help="seconds of each fake epoch (default 1: a fast GPU; 0: flat out)",
    )
    p.add_argument("--trials", type=int, default=1, help="trials per writer (default 1)")
    p.add_argument(
        "--writers",
        type=int,
        nargs="+",
        default=[16, 64, 256],
        choices=[16, 64, 256],
        help="writer counts (default all)",
    )
    p.add_argument(
        "--driver-trials",
        type=int,
        default=40,
        help="trials of the driver section's study (default 40)",
    )
    p.add_argument("--skip-store", action="store_true", help="only the driver section")
    p.add_argument("--skip-driver", action="store_true", help="only the store section")
    args = p.parse_args()
    if not 0 <= args.epoch_s <= 10 or not 1 <= args.trials <= 10:
        p.error("--epoch-s must be 0..10 and --trials 1..10 (a bounded run)")
    if not 2 <= args.driver_trials <= 500:
        p.error("--driver-trials must be 2..500")
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start; "
        f"python {sys.version.split()[0]}"
    )
    if not args.skip_store:
        print("Section 1: the study database under concurrent writers")
        print_store(store_section(args), args.epoch_s)
    if not args.skip_driver:
        print("\nSection 2: the driver's overhead per trial")
        print_driver(driver_section(args))


if __name__ == "__main__":
    if shutil.which("runuser") is None and os.geteuid() == 0:
        raise SystemExit("bench: needs runuser to start PostgreSQL as root")
    main()
