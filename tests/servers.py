"""Real servers for tests and the load benchmark: PostgreSQL 15 and a Dask cluster.

Both run as separate processes on 127.0.0.1, on free ports, in temporary folders, and are
torn down after. PostgreSQL's initdb and pg_ctl refuse to run as root, so the server runs
as the ``postgres`` user when this process is root.
"""

from __future__ import annotations

import os
import shutil
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


@contextmanager
def postgres(max_connections: int = 100) -> Iterator[str]:
    """A fresh PostgreSQL server; yields the URL of an empty database ``vaegrid``."""
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
        )
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
        yield f"postgresql://postgres@127.0.0.1:{port}/vaegrid"
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
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
