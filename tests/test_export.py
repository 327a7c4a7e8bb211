"""``vaegrid export``: a study's rows in TensorBoard and MLflow, read back with each tool's
own reader; exporting again adds nothing twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import sweep

from vaegrid.cli import main
from vaegrid.db.store import Store

STUDY = """
name = "exp"
[data]
fractions = [0.6, 0.2, 0.2]
[train]
epochs = 2
batch_size = 50
hidden = 32
lr = 1e-2
clip = 1.0
[grid]
latent = [4, 8]
model = ["linear", "mlp"]
[rank]
nll_samples = 3
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A finished 4-trial study with a validation NLL and a report (test rows, figures)."""
    root = tmp_path_factory.mktemp("export")
    sweep(root, STUDY, mnist_root)
    folder = root / "r" / "exp"
    assert main(["report", str(folder), "--data-dir", str(mnist_root)]) == 0
    return folder


@pytest.fixture
def study(swept: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(swept, tmp_path / "exp"))


def _rows(folder: Path) -> tuple[dict[tuple[str, str, int], float], dict[str, str]]:
    """(key, "split/metric", epoch) -> value from vg_epoch, and each trial's status."""
    store = Store.reader(folder / "study.db")
    try:
        epochs, trials = store.frame("vg_epoch"), store.frame("vg_trial")
    finally:
        store.close()
    out = {}
    for r in epochs.to_dict("records"):
        for m in ("elbo", "recon", "kl"):
            out[(r["key"], f"{r['split']}/{m}", int(r["epoch"]))] = float(r[m])
    return out, dict(zip(trials["key"], trials["status"], strict=True))


def test_tensorboard_holds_a_run_per_trial_its_epochs_and_hparams(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    expected, statuses = _rows(study)
    dest = study / "tb"

    hparams: dict[str, dict[str, object]] = {}

    def read() -> dict[tuple[str, str, int], float]:
        found = {}
        for run in sorted(dest.iterdir()):
            acc = EventAccumulator(str(run))
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                for event in acc.Scalars(tag):
                    assert (run.name, tag, event.step) not in found, "written twice"
                    found[(run.name, tag, event.step)] = event.value
            content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
            start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
            h = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
            hparams[run.name] = h  # the settings, for the HPARAMS tab
        return found

    assert main(["export", str(study), "--to", "tensorboard", str(dest)]) == 0
    assert "exp: 4 trials exported to tensorboard" in capsys.readouterr().out
    assert {p.name for p in dest.iterdir()} == set(statuses)  # a run per trial
    first = read()
    for (key, tag, epoch), value in expected.items():
        assert first[(key, tag, epoch)] == pytest.approx(value, rel=1e-6)
    assert {(k, e) for k, t, e in first if t == "val/nll"} == {(k, 2) for k in statuses}
    assert {(h["model"], h["latent"]) for h in hparams.values()} == {
        ("linear", 4.0), ("linear", 8.0), ("mlp", 4.0), ("mlp", 8.0)
    }  # fmt: skip
    assert {h["status"] for h in hparams.values()} == {"completed"}
    assert all(("final/val_elbo" in {t for k2, t, _ in first if k2 == k}) for k in statuses)
    assert main(["export", str(study), "--to", "tensorboard", str(dest)]) == 0  # again
    assert read() == first  # the same runs, nothing twice
    # a run folder holding what vaegrid never writes is not replaced: one line, exit 2
    (dest / next(iter(statuses)) / "notes.txt").write_text("mine")
    assert main(["export", str(study), "--to", "tensorboard", str(dest)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'notes.txt', which no export" in err
    assert (dest / next(iter(statuses)) / "notes.txt").read_text() == "mine"


def test_mlflow_holds_a_run_per_trial_under_the_studys_parent_with_figures(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    expected, statuses = _rows(study)
    uri = f"sqlite:///{study / 'mlflow.db'}"
    assert main(["export", str(study), "--to", "mlflow"]) == 0  # the default: the folder's
    assert f"exp: 4 trials exported to mlflow at {uri}" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("exp")
    assert experiment is not None

    def histories() -> dict[tuple[str, str, int], float]:
        runs = client.search_runs([experiment.experiment_id])
        parent = [r for r in runs if r.data.tags.get("vaegrid.role") == "study"]
        children = [r for r in runs if "vaegrid.key" in r.data.tags]
        assert len(parent) == 1 and len(children) == len(statuses) == len(runs) - 1
        found = {}
        for run in children:
            tags, key = run.data.tags, run.data.tags["vaegrid.key"]
            assert tags["mlflow.parentRunId"] == parent[0].info.run_id
            assert tags["vaegrid.status"] == statuses[key] == "completed"
            assert run.info.status == "FINISHED"
            assert {"latent", "model", "repeat"} <= set(run.data.params)
            for name in run.data.metrics:
                for m in client.get_metric_history(run.info.run_id, name):
                    assert (key, name, m.step) not in found, "logged twice"
                    found[(key, name, m.step)] = m.value
        artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
        assert {"figures", "report.md", "ranking.csv"} <= artifacts
        return found

    first = histories()
    for (key, tag, epoch), value in expected.items():
        assert first[(key, tag.replace("/", "_"), epoch)] == pytest.approx(value, rel=1e-6)
    assert sum(1 for _, name, _ in first if name.startswith("final_test_nll_k")) >= 1
    assert main(["export", str(study), "--to", "mlflow", uri]) == 0  # again: nothing twice
    assert histories() == first


@pytest.mark.parametrize(
    "to", [["nothing"], ["tensorboard", "a", "b"], ["csv"]], ids=["unknown", "three", "csv"]
)
def test_a_bad_export_is_one_line_and_exit_2(
    study: Path, to: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(study), "--to", *to]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "expected tensorboard [DIR] or mlflow [URI]" in err
    assert not (study / "tensorboard").exists() and not (study / "mlflow.db").exists()
