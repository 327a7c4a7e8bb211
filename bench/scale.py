"""Can one driver and one PostgreSQL keep N slots busy? The scale benchmark.

    python bench/scale.py --slots 1000 --trial-seconds 30 [--epochs 10] [--waves 3]

Runs vaegrid's real driver (``run_study``: its queue, its store, its heartbeat) against
a PostgreSQL 15 it starts (``max_connections = 100``, its default) and a Dask scheduler
whose workers offer N slots in all (``dask worker --nthreads T --resources vaegrid=T``,
processes of at most 125 threads, as a cluster's nodes). Every trial runs vaegrid's own
worker code (bench/simworker.py): its lease claimed and renewed, the driver's heartbeat
read, ``begin_run``, an epoch committed every S / E seconds, ``finish_run``; only the
training is a sleep. The grid has N x waves trials of E epochs each.

Measured, from the database and the workers' own logs:
- occupancy: the slots' busy time (each run, ``vg_run`` started to ended) over N slots x
  the sweep's span (the first run's start to the last run's end);
- hand-overs/s: runs started per second over that span;
- epoch rows/s: ``vg_epoch`` rows (two an epoch) over that span;
- commit p99: the 99th percentile of a worker's wait for an epoch's commit;
- driver CPU a trial: the driver process's CPU time (its Dask client included) over
  ``run_study``, per run.

The line printed last is the one to compare. Everything shares this machine's cores
(server, scheduler, workers, driver), so on a small machine the figures are lower bounds.
Not part of the test suite: ``make bench-scale`` runs N = 10, 100 and 1,000.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import make_mnist  # noqa: E402
from load_store import bench_study  # noqa: E402
from servers import dask_cluster, pgbouncer, postgres  # noqa: E402

THREADS = 25  # slots of one worker process (a node's GPUs), --threads
# Past this many worker processes, their kept connections (engine.POOL_KEPT and Optuna's
# one, each) would fill PostgreSQL's 100: PgBouncer in transaction mode goes in front.
DIRECT_PROCESSES_MAX = 20
# The simulated nodes' Dask workers, idle, with Dask's defaults: 40 of them took 1.44 of this
# machine's 2 cores (its statistical profiler every 10 ms, the event loop's tick every 20 ms,
# the system monitor every 0.5 s), 0.24 with these. On a cluster each worker spends that on
# its own node; here it would be taken from the driver and the database being measured.
# Given to the workers' processes only (the scheduler and the driver keep Dask's defaults);
# ``--dask-defaults`` gives them Dask's too.
QUIET_WORKERS = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int, children: bool = False) -> float:
    """A process's CPU time so far (user + system), and its reaped children's if asked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu(names: tuple[str, ...] = ("postgres", "pgbouncer")) -> float:
    """The CPU time of every database process (PostgreSQL's and PgBouncer's), ended
    backends included: a postmaster (started with -D) counts its reaped children."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm = stat.read_text().split("(", 1)[1].split(")", 1)[0]
            postmaster = "-D" in (stat.parent / "cmdline").read_text()
        except (OSError, IndexError):
            continue
        if comm in names:
            total += cpu_seconds(int(stat.parent.name), children=postmaster)
    return total


def measure(url: str, log: Path, slots: int) -> dict[str, float]:
    import psycopg

    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1)) as con:
        runs = con.execute(
            "SELECT started, ended FROM vg_run WHERE ended IS NOT NULL ORDER BY started"
        ).fetchall()
        rows = con.execute("SELECT count(*) FROM vg_epoch").fetchone()[0]
        statuses = dict(con.execute("SELECT status, count(*) FROM vg_trial GROUP BY 1").fetchall())
    first, last = runs[0][0], max(e for _, e in runs)
    span = last - first
    busy = sum(e - s for s, e in runs)
    waits = [float(x) for f in log.glob("commits-*") for x in f.read_text().split()]
    # a slot freed (the i-th run to end) to the next run started there (the slots + i-th to
    # start): the hand-over, from the database's clocks (the runs' own begin and end)
    starts, ends = sorted(s for s, _ in runs), sorted(e for _, e in runs)
    gaps = [max(0.0, b - a) for a, b in zip(ends, starts[slots:], strict=False)]
    return {
        "span": span,
        "occupancy": 100 * busy / (slots * span),
        "handovers": len(runs) / span,
        "rows": rows / span,
        "p50": 1000 * percentile(waits, 0.5),
        "p99": 1000 * percentile(waits, 0.99),
        "gap50": 1000 * percentile(gaps, 0.5),
        "gap99": 1000 * percentile(gaps, 0.99),
        "ramp": starts[min(slots, len(starts)) - 1] - starts[0],  # the first wave's starts
        "runs": len(runs),
        "completed": statuses.get("completed", 0),
        "trials": sum(statuses.values()),
    }


def statements(url: str, runs: int, top: int = 12) -> str:
    """What the database was asked, a run at a time: transactions and the ``top`` statements
    by calls (pg_stat_statements), with their mean time on the server."""
    import psycopg

    with psycopg.connect(_admin(url)) as con:
        commits = con.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'vaegrid'"
        ).fetchone()[0]
        rows = con.execute(
            "SELECT calls, mean_exec_time, regexp_replace(query, '\\s+', ' ', 'g') "
            "FROM pg_stat_statements JOIN pg_database d ON d.oid = dbid "
            "WHERE d.datname = 'vaegrid' ORDER BY calls DESC LIMIT %s",
            (top,),
        ).fetchall()
    out = [f"  database, a run: {commits / runs:.1f} transactions; statements by calls a run:"]
    out += [f"    {c / runs:6.1f} x {ms:5.2f} ms  {q[:110]}" for c, ms, q in rows]
    return "\n".join(out)


def _admin(url: str) -> str:
    """The server's ``postgres`` database: the extension lives there, the study's stays
    vaegrid's alone (a table of another kind in it would be refused)."""
    return url.rsplit("/", 1)[0] + "/postgres"


def _reset_statements(url: str) -> None:
    import psycopg

    with psycopg.connect(_admin(url), autocommit=True) as con:
        con.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        con.execute("SELECT pg_stat_statements_reset(), pg_stat_reset()")


def run(slots: int, trial_seconds: float, epochs: int, waves: int, threads: int,
        direct: bool = False, count: bool = False, dask_defaults: bool = False) -> str:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vaegrid-scale-") as folder:
        return _run(Path(folder), slots, trial_seconds, epochs, waves, threads, direct, count,
                    quiet=not dask_defaults)  # fmt: skip


def _run(
    tmp: Path,
    slots: int,
    trial_seconds: float,
    epochs: int,
    waves: int,
    per: int,
    direct: bool,
    count: bool = False,
    quiet: bool = True,
) -> str:
    import simworker

    from vaegrid.run import sweep
    from vaegrid.run.cluster import DaskExecutor
    from vaegrid.run.driver import run_study

    data = make_mnist(tmp / "data", n_train=1000, n_test=100)
    log = tmp / "log"
    log.mkdir()
    os.environ["VAEGRID_SIM_SECONDS"] = str(trial_seconds)
    os.environ["VAEGRID_SIM_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(  # a PYTHONPATH's vaegrid (a baseline) first
        [str(ROOT / "bench"), os.environ.get("PYTHONPATH", ""), str(ROOT)]
    )
    study = bench_study(slots * waves, epochs, "scale")
    sweep.execute = simworker.execute  # type: ignore[attr-defined]
    per = min(per, slots)
    processes = math.ceil(slots / per)
    bounced = processes > DIRECT_PROCESSES_MAX and not direct
    with contextlib.ExitStack() as stack:
        preload = {"shared_preload_libraries": "pg_stat_statements"} if count else None
        url = stack.enter_context(postgres(settings=preload))
        if count:
            _reset_statements(url)
        storage = stack.enter_context(pgbouncer(url)) if bounced else url
        cluster = stack.enter_context(dask_cluster())
        kept = dict(os.environ)
        if quiet:  # the workers' settings only: the scheduler and the driver keep Dask's
            os.environ.update(QUIET_WORKERS)
        try:
            for i in range(processes):
                threads = min(per, slots - i * per)
                cluster.add_worker(f"vaegrid={threads}", nthreads=threads)
        finally:
            os.environ.clear()
            os.environ.update(kept)
        cluster.wait_for(processes, timeout=120)
        executor = DaskExecutor(cluster.address)
        pool = executor.pool()
        assert pool.slots == slots, pool.slots
        said = io.StringIO()
        pids = [p.pid for p in cluster.workers]
        before = (server_cpu(), cpu_seconds(cluster.scheduler.pid), sum(map(cpu_seconds, pids)))
        cpu, wall = time.process_time(), time.monotonic()
        try:
            with contextlib.redirect_stdout(said):
                code = run_study(study, tmp / "results", pool, data, progress=False,  # type: ignore[arg-type]
                                 executor=executor, storage=storage)  # fmt: skip
        finally:
            executor.close()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        after = (server_cpu(), cpu_seconds(cluster.scheduler.pid), sum(map(cpu_seconds, pids)))
        found = measure(url, log, slots)
        if count:
            print(statements(url, max(1, found["runs"])), file=sys.stderr)
    through = "PgBouncer (transaction mode) to PostgreSQL" if bounced else "PostgreSQL"
    dask = "quiet (QUIET_WORKERS)" if quiet else "with Dask defaults"
    print(f"  {processes} worker processes of {per} slots, through {through}; Dask workers "
          f"{dask}", file=sys.stderr)  # fmt: skip
    print(f"  driver: exit {code}, {wall:.1f} s wall; last words: "
          f"{said.getvalue().strip().splitlines()[-2:]}", file=sys.stderr)  # fmt: skip
    print(
        f"  {found['completed']}/{found['trials']} completed in {found['runs']} runs over "
        f"{found['span']:.1f} s; commit p50 {found['p50']:.0f} ms; a freed slot's next run "
        f"after p50 {found['gap50']:.0f} ms, p99 {found['gap99']:.0f} ms; all slots busy "
        f"{found['ramp']:.1f} s after the first start; useful occupancy (the "
        f"trials' {trial_seconds:g} s each over slots x span) "
        f"{100 * found['completed'] * trial_seconds / (slots * found['span']):.1f} %",
        file=sys.stderr,
    )
    each = [1000 * (a - b) / max(1, found["runs"]) for a, b in zip(after, before, strict=True)]
    print(f"  CPU a trial: driver {1000 * cpu / max(1, found['runs']):.0f} ms, database "
          f"{each[0]:.0f} ms, Dask scheduler {each[1]:.0f} ms, workers {each[2]:.0f} ms "
          f"(load average {os.getloadavg()[0]:.1f})", file=sys.stderr)  # fmt: skip
    return (
        f"slots {slots}: occupancy {found['occupancy']:.1f} %, hand-overs "
        f"{found['handovers']:.1f}/s, epoch rows {found['rows']:.0f}/s, commit p99 "
        f"{found['p99']:.0f} ms, driver CPU {1000 * cpu / max(1, found['runs']):.0f} ms a trial"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--trial-seconds", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--waves", type=int, default=3, help="trials per slot (default 3)")
    parser.add_argument("--direct", action="store_true",
                        help="no PgBouncer, however many worker processes")  # fmt: skip
    parser.add_argument(
        "--statements",
        action="store_true",
        help="count what the database is asked (pg_stat_statements)",
    )
    parser.add_argument("--dask-defaults", action="store_true",
                        help="the simulated workers with Dask's default profiler, tick and "
                             "system monitor (see QUIET_WORKERS)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"slots per worker process (default {THREADS})")  # fmt: skip
    args = parser.parse_args()
    if not (1 <= args.slots <= 5000 and 0 < args.trial_seconds <= 3600
            and 1 <= args.epochs <= 100 and 1 <= args.waves <= 100
            and 1 <= args.threads <= 500):  # fmt: skip
        parser.error("--slots 1..5000, --trial-seconds 0..3600, --epochs 1..100, --waves 1..100, "
                     "--threads 1..500")  # fmt: skip
    line = run(
        args.slots,
        args.trial_seconds,
        args.epochs,
        args.waves,
        args.threads,
        args.direct,
        args.statements,
        args.dask_defaults,
    )
    print(line, flush=True)


if __name__ == "__main__":
    main()
