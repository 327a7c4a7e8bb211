"""vaegrid's tables (``vg_*``) beside Optuna's in one database, and their schema version.

Optuna's tables make ``optuna.load_study`` and optuna-dashboard read a sweep as-is. vaegrid's
hold what Optuna has no place for: per-epoch train and validation metrics, every run of a
trial with its device and timing, test results, and the coordination of drivers and
workers on a server.

The schema has a version, kept in ``vg_meta``. A writer (``run``, ``report``) brings an
older database up to :data:`SCHEMA_VERSION` in place, one numbered step at a time, each in
one transaction; a database of a newer version, or of a version vaegrid never made, is
refused with one line naming both versions, never misread. Readers (``status``, ``load``)
read the versions they understand and migrate nothing.

Why not Alembic: Optuna already keeps *its* schema with Alembic in this very database, in
the table ``alembic_version``; a second Alembic history needs its own version table, an
environment and a script folder, for steps that are a few DDL statements each.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Float, ForeignKey, Integer, String, Text, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vaegrid.errors import InputError
from vaegrid.status import PENDING, RUNNING

# 1: every database made before vg_meta existed (its vg_trial repeats the seed's four axes
#    as columns hidden, latent, lr, clip).
# 2: vg_meta; vg_study.description; vg_trial without axis columns (a trial's settings
#    live in its config alone).
# 3: vg_nll, the validation NLL.
# 4: vg_test keyed by (key, nll_samples): a report adds a test NLL at another k beside the
#    stored ones; Optuna's ledger without the parameter "repeat" (optuna_align.py).
# 5: indexes on vg_trial.status and vg_run.status: the driver's start and `status` find
#    the running trials and runs of 100,000 without reading them all (tests/test_indexes.py).
SCHEMA_VERSION = 5


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    """Facts about the database itself: ``schema_version``."""

    __tablename__ = "vg_meta"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class StudyRow(Base):
    __tablename__ = "vg_study"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)  # JSON of the fixed settings
    source: Mapped[str] = mapped_column(Text)  # the study file it was last run from
    slots: Mapped[int] = mapped_column(Integer, default=1)  # trials at once in the last run
    description: Mapped[str | None] = mapped_column(Text)  # the study file's description


class TrialRow(Base):
    __tablename__ = "vg_trial"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    config: Mapped[str] = mapped_column(Text)  # TrialConfig JSON: every setting
    status: Mapped[str] = mapped_column(String, default=PENDING, index=True)  # a status.Status
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)
    cause: Mapped[str | None] = mapped_column(Text)  # diverged: what and where; failed: the error
    diverged_epoch: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # training time, all runs


class RunRow(Base):
    __tablename__ = "vg_run"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), index=True)
    device: Mapped[str] = mapped_column(String)
    worker: Mapped[int] = mapped_column(Integer)  # pid
    started: Mapped[float] = mapped_column(Float)  # unix time
    ended: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String, default=RUNNING, index=True)  # how it ended
    error: Mapped[str | None] = mapped_column(Text)  # traceback of a failed run
    max_rss_mb: Mapped[float | None] = mapped_column(Float)  # worker's peak resident memory so far


class ProvenanceRow(Base):
    """What a run computed with."""

    __tablename__ = "vg_provenance"
    run_id: Mapped[int] = mapped_column(ForeignKey("vg_run.id"), primary_key=True)
    device_kind: Mapped[str] = mapped_column(String)  # provenance.device_kind
    host: Mapped[str] = mapped_column(String)
    versions: Mapped[str] = mapped_column(Text)  # JSON: python, vaegrid, git, torch, cuda, ...
    peak_device_mb: Mapped[float | None] = mapped_column(Float)  # CUDA: max allocated


class DriverRow(Base):
    """The live driver of the study (servers and clusters: workers watch its heartbeat)."""

    __tablename__ = "vg_driver"
    study: Mapped[str] = mapped_column(String, primary_key=True)
    token: Mapped[str] = mapped_column(String)  # this driver run's id, sent with every task
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String)
    beat: Mapped[float] = mapped_column(Float)  # unix time of its last heartbeat


class ClaimRow(Base):
    """Who runs a trial (servers): a lease its worker renews; a dead worker's expires."""

    __tablename__ = "vg_claim"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    owner: Mapped[str] = mapped_column(String)  # host:pid:thread of the worker
    expires: Mapped[float] = mapped_column(Float)  # unix time


class TrialDeviceRow(Base):
    """The kind of device a trial's first epoch ran on: it only ever continues on that kind."""

    __tablename__ = "vg_trial_device"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    device_kind: Mapped[str] = mapped_column(String)


class EpochRow(Base):
    __tablename__ = "vg_epoch"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String, primary_key=True)  # "train" or "val"
    elbo: Mapped[float] = mapped_column(Float)
    recon: Mapped[float] = mapped_column(Float)
    kl: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)


class StopRow(Base):
    """The rung that stopped a ``stopped`` trial (halving)."""

    __tablename__ = "vg_stop"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    rung: Mapped[int] = mapped_column(Integer)  # the epoch it was compared at, and stopped


class NllRow(Base):
    """A trial's importance-sampled validation NLL at an epoch ([rank] nll_samples): at its
    last epoch, and at the rungs of a halving study that compares by it."""

    __tablename__ = "vg_nll"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    nll: Mapped[float] = mapped_column(Float)  # -log p(x), nats per image, mean over val
    samples: Mapped[int] = mapped_column(Integer)  # k, importance samples per image
    seconds: Mapped[float] = mapped_column(Float)  # time it took


class TestRow(Base):
    """A tested trial's metrics on the test split, one row per k of its NLL."""

    __tablename__ = "vg_test"
    key: Mapped[str] = mapped_column(ForeignKey("vg_trial.key"), primary_key=True)
    # k, importance samples per image of ``nll``; elbo, recon and kl do not depend on it
    nll_samples: Mapped[int] = mapped_column(Integer, primary_key=True)
    elbo: Mapped[float] = mapped_column(Float)  # test metrics, as validation's: one z per image
    recon: Mapped[float] = mapped_column(Float)
    kl: Mapped[float] = mapped_column(Float)
    nll: Mapped[float] = mapped_column(Float)  # importance-sampled -log p(x), nats per image
    seconds: Mapped[float] = mapped_column(Float)  # time the evaluation took
    evaluated: Mapped[float] = mapped_column(Float)  # unix time


def _to_2(con: Connection) -> None:
    """1 -> 2: the tables version 1 lacked (it gained some over time), the study's
    description, and no axis columns."""
    Base.metadata.create_all(con)
    if "description" not in {c["name"] for c in inspect(con).get_columns("vg_study")}:
        con.execute(text("ALTER TABLE vg_study ADD COLUMN description TEXT"))
    for column in ("hidden", "latent", "lr", "clip"):
        if column in {c["name"] for c in inspect(con).get_columns("vg_trial")}:
            con.execute(text(f"ALTER TABLE vg_trial DROP COLUMN {column}"))


def _to_3(con: Connection) -> None:
    """2 -> 3: the validation NLL's table (vg_nll)."""
    NllRow.__table__.create(con, checkfirst=True)  # type: ignore[attr-defined]


def _to_4(con: Connection) -> None:
    """3 -> 4: vg_test keyed by (key, nll_samples), its rows kept; Optuna's trials without
    the parameter "repeat" (its value becomes a user attribute), the searched string
    settings as categorical parameters, val_nll and the test metrics as attributes."""
    from vaegrid.db.optuna_align import align

    table = Base.metadata.tables[TestRow.__tablename__]
    rows = []
    if inspect(con).has_table(table.name):
        rows = [dict(r._mapping) for r in con.execute(text("SELECT * FROM vg_test"))]
        table.drop(con)
    table.create(con)
    names = {c.name for c in table.columns}
    if rows:
        con.execute(table.insert(), [{n: r[n] for n in names} for r in rows])
    align(con)


def _to_5(con: Connection) -> None:
    """4 -> 5: the status indexes of vg_trial and vg_run."""
    for model in (TrialRow, RunRow):
        for index in model.__table__.indexes:  # type: ignore[attr-defined]
            index.create(con, checkfirst=True)


# The step that brings a database of version N to N + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _to_2, 2: _to_3, 3: _to_4, 4: _to_5}
assert set(MIGRATIONS) == set(range(1, SCHEMA_VERSION))


def version(con: Connection, where: str) -> int | None:
    """The schema version of the database ``con`` is on; None when it holds no vaegrid table.

    Raises:
        InputError: the version is not a number vaegrid ever wrote.
    """
    tables = set(inspect(con).get_table_names())
    if MetaRow.__tablename__ not in tables:
        return 1 if StudyRow.__tablename__ in tables else None
    row = con.execute(text("SELECT value FROM vg_meta WHERE name = 'schema_version'")).first()
    found = row[0] if row is not None else None
    if not isinstance(found, str) or not found.isdigit() or not 1 <= int(found) < 1_000_000:
        raise InputError(
            f"{where}: schema version {str(found)[:40]!r} is not one vaegrid writes "
            f"(this vaegrid writes {SCHEMA_VERSION}); not a vaegrid study database, or edited"
        )
    return int(found)


def check_readable(con: Connection, where: str) -> None:
    """Refuse a database newer than this vaegrid (a reader migrates nothing), or one whose
    tables lost their primary keys.

    Raises:
        InputError: naming both versions, or the table.
    """
    found = version(con, where)
    if found is not None and found > SCHEMA_VERSION:
        raise _newer(where, found)
    check_keys(con, where, found)


# Tables whose primary key changed: (the version that changed it, the key before it).
FORMER_KEYS = {"vg_test": (4, ["key"])}


def check_keys(con: Connection, where: str, found: int | None = None) -> None:
    """Refuse a vaegrid table without its primary key: the one-row-per-key upserts rest on
    it (a vg_trial remade without one doubled its rows on the next run).

    Raises:
        InputError: naming the table and the key it should have.
    """
    seen = inspect(con)
    present = set(seen.get_table_names())
    for name, table in Base.metadata.tables.items():
        if name not in present:
            continue
        want = [c.name for c in table.primary_key.columns]
        allowed = [sorted(want)]
        changed, before = FORMER_KEYS.get(name, (0, want))
        if found is not None and found < changed:  # a database this vaegrid migrates (or
            allowed.append(sorted(before))  # one whose version lies: migrated again)
            want = before
        got = seen.get_pk_constraint(name).get("constrained_columns") or []
        if sorted(got) not in allowed:
            raise InputError(
                f"{where}: table {name} has primary key {got or 'none'}, not "
                f"({', '.join(want)}) as vaegrid makes it; not a vaegrid study database, or edited"
            )


def prepare(con: Connection, where: str) -> None:
    """Make the tables of a new database, or migrate an older one in place, step by step.

    Runs inside the caller's transaction on ``con``.

    Raises:
        InputError: the database is newer than this vaegrid, or its version is not one
            vaegrid wrote.
    """
    found = version(con, where)
    if found is not None:
        check_keys(con, where, found)
    if found == SCHEMA_VERSION:
        return  # nothing to write: workers open the database often
    if con.dialect.name == "postgresql":  # one migrator at a time (a driver, a report...)
        con.execute(text("SELECT pg_advisory_xact_lock(7305189741)"))  # vaegrid schema
        found = version(con, where)  # as the one before us may have left it
        if found == SCHEMA_VERSION:
            return
    if found is None:
        Base.metadata.create_all(con)
        _set(con, "created_schema", SCHEMA_VERSION)
    elif found > SCHEMA_VERSION:
        raise _newer(where, found)
    else:
        for step in range(found, SCHEMA_VERSION):
            MIGRATIONS[step](con)
        if found == 1:  # what it was made as: its final weights carry no identity
            _set(con, "created_schema", 1)
    _set(con, "schema_version", SCHEMA_VERSION)


def _set(con: Connection, name: str, value: int) -> None:
    con.execute(text("DELETE FROM vg_meta WHERE name = :n"), {"n": name})
    con.execute(
        text("INSERT INTO vg_meta (name, value) VALUES (:n, :v)"), {"n": name, "v": str(value)}
    )


def created_schema(con: Connection) -> int:
    """The schema version the database was made at (1: before versions were kept)."""
    if MetaRow.__tablename__ not in set(inspect(con).get_table_names()):
        return 1
    row = con.execute(text("SELECT value FROM vg_meta WHERE name = 'created_schema'")).first()
    value = row[0] if row is not None else "1"
    return int(value) if isinstance(value, str) and value.isdigit() else 1


def weights_stamped(created: int) -> bool:
    """Whether a database made at schema version ``created`` holds final weights stamped
    with their trial and model (since version 2: older ones are checked by shape alone)."""
    return created >= 2


def has_column(con: Connection, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` here: a reader reads older databases as they are
    (``vg_study.description`` came with version 2), never migrating them."""
    inspector = inspect(con)
    if table not in set(inspector.get_table_names()):
        return False
    return column in {c["name"] for c in inspector.get_columns(table)}


def _newer(where: str, found: int) -> InputError:
    return InputError(
        f"{where}: made by a newer vaegrid (schema version {found}; this vaegrid reads "
        f"versions 1 to {SCHEMA_VERSION}); upgrade vaegrid to read it"
    )
