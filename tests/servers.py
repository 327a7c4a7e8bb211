"""Real servers for tests and the load benchmark: PostgreSQL 15 and a Dask cluster.

Both run as separate processes on 127.0.0.1, on free ports, in temporary folders, and are
torn down after. PostgreSQL's initdb and pg_ctl refuse to run as root, so the server runs
as the ``postgres`` user when this process is root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def have_postgres() -> bool:
    return (PG_BIN / "initdb").exists() and (os.geteuid() != 0 or shutil.which("runuser"))


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


_PG: dict[int, tuple[Path, str, Path]] = {}  # port -> (data folder, options, log)


def pg_ctl(url: str, action: str) -> None:
    """``stop`` (fast: every connection terminated, as a maintenance restart does) or
    ``start`` the server of ``url`` (made by :func:`postgres`)."""
    data, options, log = _PG[int(url.rsplit(":", 1)[1].split("/")[0])]
    cmd = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    cmd += ["-m", "fast", "stop"] if action == "stop" else ["-o", options, "-l", str(log), "start"]
    subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=120)


@contextmanager
def postgres(max_connections: int = 100, settings: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh PostgreSQL server; yields the URL of an empty database ``vaegrid``.
    ``settings``: more server settings (``-c name=value``), e.g. a preloaded library."""
    base = Path(tempfile.mkdtemp(prefix="vaegrid-pg-"))
    base.chmod(0o755)
    data = base / "data"
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    try:
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                          "postgres", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={max_connections}"
        ) + "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                          "-t", "60", "-l", str(base / "log"), "start"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as con:
            con.execute("CREATE DATABASE vaegrid")
        _PG[port] = (data, options, base / "log")
        yield f"postgresql://postgres@127.0.0.1:{port}/vaegrid"
    finally:
        _PG.pop(port, None)
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """The URL of a new empty database ``name`` on the server of ``url`` (tests that share
    a server and must not see each other's studies)."""
    import psycopg

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
    ) as con:
        con.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}"


PGBOUNCER = Path("/usr/sbin/pgbouncer")


def have_pgbouncer() -> bool:
    return have_postgres() and PGBOUNCER.exists()


@contextmanager
def pgbouncer(url: str, server_connections: int = 20) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the server of ``url`` (made by
    :func:`postgres`): each client transaction gets any of ``server_connections`` server
    connections. Yields ``url`` through it. It refuses to run as root, so runs as
    ``postgres`` then; clients' ``options`` are dropped, as such a deployment does."""
    base = Path(tempfile.mkdtemp(prefix="vaegrid-pgb-"))
    base.chmod(0o755)
    port, server = free_port(), url.rsplit(":", 1)[1].split("/")[0]
    (base / "users.txt").write_text('"postgres" ""\n')
    (base / "pgbouncer.ini").write_text(
        f"[databases]\n* = host=127.0.0.1 port={server}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {base}/users.txt\npool_mode = transaction\n"
        f"default_pool_size = {server_connections}\nmax_client_conn = 5000\n"
        "ignore_startup_parameters = options,extra_float_digits\n"
        f"logfile = {base}/log\npidfile = {base}/pid\n"
    )
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    bouncer = subprocess.Popen(_as_postgres([str(PGBOUNCER), str(base / "pgbouncer.ini")]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert bouncer.poll() is None and time.time() < deadline, (base / "log").read_text()
            time.sleep(0.1)
        yield url.replace(f":{server}/", f":{port}/")
    finally:
        with contextlib.suppress(ProcessLookupError):  # runuser's child too, as root
            os.killpg(bouncer.pid, signal.SIGKILL)
        bouncer.wait()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class DaskCluster:
    """A scheduler and its workers, each a process of its own, like separate nodes."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_worker(self, resources: str | None, nthreads: int = 1) -> subprocess.Popen[bytes]:
        """A ``dask worker`` without a nanny: killed, it stays dead (as a lost node)."""
        cmd = [str(Path(sys.executable).parent / "dask"), "worker", self.address,
               "--nthreads", str(nthreads), "--no-nanny", "--no-dashboard",
               "--death-timeout", "60"]  # fmt: skip
        if resources:
            cmd += ["--resources", resources]
        worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(worker)
        return worker

    def wait_for(self, n_workers: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=timeout)

    def stop(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait()


@contextmanager
def dask_cluster() -> Iterator[DaskCluster]:
    """A ``dask scheduler`` on a free port of 127.0.0.1 (add workers with ``add_worker``)."""
    port = free_port()
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), "scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cluster = DaskCluster(f"tcp://127.0.0.1:{port}", scheduler)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    try:
        yield cluster
    finally:
        cluster.stop()


SLURM_SBIN = Path("/usr/sbin")


def slurm_missing() -> str | None:
    """Why a single-node Slurm cannot start here (``None``: it can)."""
    if os.geteuid() != 0:
        return "a single-node Slurm needs root (slurmd runs jobs as their users)"
    for tool in ("slurmctld", "slurmd", "munged"):
        if not (SLURM_SBIN / tool).exists():
            return f"{SLURM_SBIN / tool} is missing (apt-get install slurm-wlm munge)"
    for tool in ("sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (apt-get install slurm-wlm)"
    if not Path("/etc/munge/munge.key").exists():
        return "/etc/munge/munge.key is missing (apt-get install munge makes it)"
    return None


@dataclass
class Slurm:
    """A running single-node Slurm; its commands find it through ``SLURM_CONF``."""

    conf: Path
    base: Path
    partition: str = "debug"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def squeue(self, name: str | None = None) -> list[tuple[str, str, str]]:
        """(job id, name, state) of every job in the queue, or of those named ``name``."""
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i|%j|%T"], env=self.env, check=True,
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        jobs = [tuple(line.split("|")) for line in out.splitlines() if line.strip()]
        return [j for j in jobs if name is None or j[1] == name]  # type: ignore[misc]

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args], env=self.env, check=True, timeout=30)


@contextmanager
def slurm(cpus: int | None = None) -> Iterator[Slurm]:
    """A single-node Slurm (slurmctld + slurmd as root, munged as munge) on free ports,
    its state, spool, logs and munge socket in a temporary folder; every job and daemon
    ends with it."""
    why = slurm_missing()
    if why is not None:
        raise RuntimeError(why)
    base = Path(tempfile.mkdtemp(prefix="vaegrid-slurm-"))
    base.chmod(0o755)
    munge_dir = base / "munge"
    munge_dir.mkdir()
    shutil.chown(munge_dir, "munge", "munge")
    socket_path = munge_dir / "munge.socket"
    host = socket.gethostname()
    cpus = cpus or os.cpu_count() or 1
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    conf = base / "slurm.conf"
    conf.write_text(
        f"""ClusterName=vaegridtest
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=2
KillWait=5
OverTimeLimit=0
SchedulerParameters=defer_batch=0
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    for folder in ("state", "spool"):
        (base / folder).mkdir()
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons: list[subprocess.Popen[bytes]] = []
    cluster = Slurm(conf, base)
    try:
        subprocess.run(
            ["runuser", "-u", "munge", "--", str(SLURM_SBIN / "munged"), "--socket",
             str(socket_path), "--pid-file", str(munge_dir / "munged.pid"), "--log-file",
             str(munge_dir / "munged.log"), "--seed-file", str(munge_dir / "seed"),
             "--force"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for daemon in ("slurmctld", "slurmd"):
            cmd = [str(SLURM_SBIN / daemon), "-D", "-f", str(conf)]
            with open(base / f"{daemon}.err", "wb") as err:
                daemons.append(
                    subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
                )
        deadline = time.time() + 60
        while True:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
            )
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                break
            if time.time() > deadline or any(d.poll() is not None for d in daemons):
                logs = " ".join(
                    (base / f).read_text(errors="replace")[-400:]
                    for f in ("slurmctld.log", "slurmd.log")
                    if (base / f).exists()
                )
                raise RuntimeError(f"Slurm did not come up: {out.stdout}{out.stderr} {logs}")
            time.sleep(0.3)
        yield cluster
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True,
                       timeout=30)  # fmt: skip
        for d in reversed(daemons):
            d.terminate()
            try:
                d.wait(15)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
        pid = munge_dir / "munged.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid.read_text().strip()), 15)
        shutil.rmtree(base, ignore_errors=True)
