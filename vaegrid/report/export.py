"""A study's per-epoch rows where labs watch and share curves: TensorBoard and MLflow.

``vaegrid export STUDY --to tensorboard [DIR]``: a run per trial (``DIR/<key>``) with the
per-epoch train and validation ELBO, reconstruction and KL (``train/elbo``, ``val/kl``...),
the validation NLL where the study computes one, and the trial's settings and final
metrics through TensorBoard's hparams plugin (its HPARAMS tab compares the trials).

``vaegrid export STUDY --to mlflow [URI]``: an experiment named after the study, a parent
run holding the fixed settings and the report's figures, tables and report.md as
artifacts, and a child run per trial with its settings as params, every metric by epoch
(``step``), final and test metrics, and the tags ``vaegrid.key`` and ``vaegrid.status``.
The default URI is a SQLite file in the study folder (MLflow 3 keeps its file store in
maintenance and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set).

Both are idempotent: exporting again leaves one run per trial with the same values (a
TensorBoard run is rewritten whole; an MLflow run is found by its tag and given only
what it lacks), so an export after more trials finished adds them. Both packages are
optional (``pip install 'vaegrid[export]'``); each is imported only here.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaegrid.analysis import tables
from vaegrid.api import StudyRows
from vaegrid.errors import InputError, first_line
from vaegrid.layout import TABLES, StudyLayout
from vaegrid.safeio import refuse_link
from vaegrid.status import COMPLETED, DIVERGED, FAILED, STOPPED

FORMATS = ("tensorboard", "mlflow")
EVENTS = "events.out.tfevents."  # TensorBoard's event files: what a run folder may hold
# MLflow run status of a trial by how it ended; a trial still under way stays RUNNING.
MLFLOW_STATUS = {COMPLETED: "FINISHED", STOPPED: "FINISHED", DIVERGED: "FAILED", FAILED: "FAILED"}


def default_destination(fmt: str, layout: StudyLayout) -> str:
    """Where an export goes when the command names no place: inside the study folder."""
    if fmt == "tensorboard":
        return str(layout.tensorboard)
    return f"sqlite:///{layout.mlflow_db.resolve()}"


def export(
    rows: StudyRows, layout: StudyLayout, fmt: str, dest: str, say: Callable[[str], None]
) -> int:
    """Export the study's rows to ``fmt`` at ``dest``; the number of trials exported.

    Raises:
        InputError: ``fmt`` unknown, its package not installed, or ``dest`` unusable.
    """
    from vaegrid.study.load import is_study_name

    if fmt not in FORMATS:
        raise InputError(f"--to: {fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    if not is_study_name(rows.name):  # it names MLflow's experiment and goes in its filters
        raise InputError(f"the stored study's name {rows.name[:60]!r} is not one vaegrid makes")
    trials = _trials(rows)
    if fmt == "tensorboard":
        return _tensorboard(rows, trials, Path(dest), say)
    if importlib.util.find_spec("mlflow") is None:
        raise InputError(_missing("mlflow"))
    for name in ("mlflow", "alembic"):  # their INFO lines on creating tables
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():  # MLflow 3.18's own SQLAlchemy deprecations: not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        return _mlflow(rows, trials, layout, dest, say)


def _trials(rows: StudyRows) -> list[dict[str, Any]]:
    """Each trial with a finished epoch: key, settings, status, per-epoch and final metrics."""
    per_trial = rows.per_trial().set_index("key")
    out = []
    for key, group in rows.epochs.groupby("key", sort=True):
        info: dict[str, Any] = {str(k): v for k, v in per_trial.loc[key].items()}
        settings = {n: _plain(info[n]) for n in rows.axes}
        steps: dict[str, dict[int, float]] = {}
        for r in group.to_dict("records"):
            for m in tables.METRICS:
                steps.setdefault(f"{r['split']}/{m}", {})[int(r["epoch"])] = float(r[m])
        nll = rows.nll[rows.nll["key"] == key]
        if len(nll):
            steps["val/nll"] = dict(zip(nll["epoch"].astype(int), nll["nll"].astype(float),
                                        strict=True))  # fmt: skip
        final = {c: float(info[c]) for c in (*tables.SPLIT_METRICS, "val_nll")
                 if c in info and _finite(info[c])}  # fmt: skip
        for t in rows.tests[rows.tests["key"] == key].to_dict("records"):
            final.update(test_elbo=float(t["elbo"]), test_recon=float(t["recon"]),
                         test_kl=float(t["kl"]))  # fmt: skip
            final[f"test_nll_k{int(t['nll_samples'])}"] = float(t["nll"])
        out.append({
            "key": str(key), "config": str(info["config"]), "repeat": int(info["repeat"]),
            "status": str(info["status"]), "settings": settings, "steps": steps, "final": final,
        })  # fmt: skip
    return out


def _tensorboard(
    rows: StudyRows, trials: list[dict[str, Any]], dest: Path, say: Callable[[str], None]
) -> int:
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError:
        raise InputError(_missing("tensorboard")) from None
    refuse_link(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: is not a folder; the TensorBoard runs go there")
    for t in trials:  # every check before anything is written
        _check_run_folder(dest / t["key"])
    dest.mkdir(parents=True, exist_ok=True)
    for left in dest.glob(".*-*"):  # a killed export's staging folders (event files only)
        if len(left.name) > 14 and left.name[1:13] in {t["key"] for t in trials}:
            _check_run_folder(left)
            shutil.rmtree(left)
    domains = {n: sorted({_plain(t["settings"][n]) for t in trials}, key=str) for n in rows.axes}
    discrete = {n: v for n, v in domains.items() if all(isinstance(x, str) for x in v)}
    for i, t in enumerate(trials, 1):
        staging = Path(tempfile.mkdtemp(prefix=f".{t['key']}-", dir=dest))
        try:
            with SummaryWriter(log_dir=str(staging)) as w:
                for tag, by_epoch in t["steps"].items():
                    for epoch, value in sorted(by_epoch.items()):
                        w.add_scalar(tag, value, epoch)
                h = {**t["settings"], "repeat": t["repeat"], "status": t["status"]}
                metrics = {f"final/{k}": v for k, v in t["final"].items()}
                for summary in hparams(h, metrics, discrete):
                    w.file_writer.add_summary(summary)
                for tag, value in metrics.items():
                    w.add_scalar(tag, value)
            target = dest / t["key"]
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        if i % 50 == 0:
            say(f"export: {i}/{len(trials)} trials written to {dest}")
    return len(trials)


def _check_run_folder(folder: Path) -> None:
    """A trial's run folder may be replaced only if it holds TensorBoard's files alone."""
    refuse_link(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a folder; a trial's TensorBoard run goes there")
    foreign = [p.name for p in folder.iterdir() if not p.name.startswith(EVENTS)]
    if foreign:
        raise InputError(
            f"{folder}: holds {foreign[0]!r}, which no export of vaegrid writes; refused (it "
            "replaces a trial's run folder whole)"
        )


def _mlflow(
    rows: StudyRows,
    trials: list[dict[str, Any]],
    layout: StudyLayout,
    uri: str,
    say: Callable[[str], None],
) -> int:
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(rows.name)
        if found is None:
            where = None
            if uri.startswith("sqlite:///") and uri == default_destination("mlflow", layout):
                where = layout.mlflow_artifacts.resolve().as_uri()
            experiment = client.create_experiment(rows.name, artifact_location=where)
        else:
            experiment = found.experiment_id
        parent = _run(client, experiment, {"vaegrid.study": rows.name, "vaegrid.role": "study"},
                      rows.name)  # fmt: skip
        fixed = rows.fingerprint.get("train", {})
        _params(client, parent, {f"fixed.{k}": v for k, v in fixed.items()}, Param)
        client.set_tag(parent, "vaegrid.searched", ", ".join(rows.axes))
        if rows.description:
            client.set_tag(parent, "mlflow.note.content", rows.description)
        for i, t in enumerate(trials, 1):
            tags = {"vaegrid.study": rows.name, "vaegrid.key": t["key"],
                    "mlflow.parentRunId": parent}  # fmt: skip
            run = _run(client, experiment, tags, t["key"])
            client.set_tag(run, "vaegrid.status", t["status"])
            client.set_tag(run, "vaegrid.config", t["config"])
            params = {**t["settings"], "repeat": t["repeat"]}
            _params(client, run, params, Param)
            metrics = {tag.replace("/", "_"): steps for tag, steps in t["steps"].items()}
            last = max((e for s in t["steps"].values() for e in s), default=0)
            for name, value in t["final"].items():
                metrics.setdefault(f"final_{name}", {})[last] = value
            new = []
            for name, by_epoch in metrics.items():
                have = {m.step for m in client.get_metric_history(run, name)}
                new += [Metric(name, v, 0, e) for e, v in sorted(by_epoch.items()) if e not in have]
            for start in range(0, len(new), 900):  # MLflow takes 1,000 metrics a batch
                client.log_batch(run, metrics=new[start : start + 900])
            status = MLFLOW_STATUS.get(t["status"])
            if status is not None:
                client.set_terminated(run, status)
            if i % 50 == 0:
                say(f"export: {i}/{len(trials)} trials logged to {uri}")
        if layout.figures.is_dir():  # the report's, when it was made
            client.log_artifacts(parent, str(layout.figures), "figures")
        for path in (layout.report, *(layout.table(n) for n in TABLES)):
            if path.is_file():
                client.log_artifact(parent, str(path))
        client.set_terminated(parent, "FINISHED")
    except MlflowException as e:
        raise InputError(f"--to mlflow: {uri}: {first_line(e, 300)}") from None
    return len(trials)


def _run(client: Any, experiment: str, tags: dict[str, str], name: str) -> str:
    """The run of ``experiment`` tagged ``tags`` (the first found), made if there is none."""
    query = " and ".join(
        f"tags.`{k}` = '{v}'" for k, v in tags.items() if k != "mlflow.parentRunId"
    )
    found = client.search_runs([experiment], query, max_results=1)
    if found:
        return str(found[0].info.run_id)
    return str(client.create_run(experiment, tags=tags, run_name=name).info.run_id)


def _params(client: Any, run: str, params: dict[str, Any], param: Callable[..., Any]) -> None:
    """Log what the run lacks (MLflow refuses to change a param; a key never changes them)."""
    have = client.get_run(run).data.params
    new = [param(k, str(v)) for k, v in params.items() if k not in have]
    for start in range(0, len(new), 90):  # MLflow takes 100 params a batch
        client.log_batch(run, params=new[start : start + 90])


def _plain(value: Any) -> Any:
    """A pandas/numpy scalar as a plain int, float or str (what both tools take)."""
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    return value if isinstance(value, int | float | str) else str(value)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _missing(package: str) -> str:
    return (
        f"--to {package}: the {package} package is not installed; install it with "
        "pip install 'vaegrid[export]'"
    )
