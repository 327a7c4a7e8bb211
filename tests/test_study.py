from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vaegrid.cli import main
from vaegrid.errors import InputError
from vaegrid.study import GridSpec, expand, load_study, parse_study, split_sizes

STUDIES = Path(__file__).parent.parent / "studies"


def parse(text_or_raw: dict) -> object:  # type: ignore[type-arg]
    return parse_study(text_or_raw, source="s.toml", default_name="s")


def test_seed_study_is_the_seed_grid_with_54_unique_keys() -> None:
    study = load_study(STUDIES / "seed.toml")
    assert (study.train.epochs, study.train.batch_size, study.train.optimizer) == (15, 1000, "adam")
    assert study.grid == GridSpec((400, 600, 800), (100, 200, 400), (1.0, 1e-5, 3e-2), (1.0, 2e-4))
    assert study.data.fractions == (0.8, 0.1, 0.1) and study.seed == 0
    assert split_sizes(study.data) == (56_000, 7_000, 7_000)
    keys = [t.key for t in expand(study)]
    assert len(keys) == 54 == len(set(keys))


def test_keys_do_not_depend_on_the_order_of_values() -> None:
    a = parse({"grid": {"hidden": [400, 800], "lr": [1, 1e-3]}})
    b = parse({"grid": {"hidden": [800, 400], "lr": [1e-3, 1.0]}})
    assert sorted(t.key for t in expand(a)) == sorted(t.key for t in expand(b))  # type: ignore[arg-type]


def test_keys_change_with_any_fixed_setting() -> None:
    base = {t.key for t in expand(parse({}))}  # type: ignore[arg-type]
    for raw in ({"seed": 1}, {"train": {"epochs": 3}}, {"data": {"fractions": [0.7, 0.15, 0.15]}}):
        assert base.isdisjoint(t.key for t in expand(parse(raw)))  # type: ignore[arg-type]


def test_smoke_study_is_a_2x2_grid_on_a_subset() -> None:
    study = load_study(STUDIES / "smoke.toml")
    assert len(expand(study)) == 4 and study.train.epochs == 2
    assert split_sizes(study.data) == (4_800, 600, 600)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"epochs": 3}, r"unknown key 'epochs'; allowed keys: data, description, grid"),
        (
            {"train": {"epoch": 3}},
            r"unknown key 'train\.epoch'; allowed keys in \[train\]: batch_size",
        ),
        ({"grid": {"dropout": [0.1]}}, r"unknown key 'grid\.dropout'"),
        (
            {"train": {"epochs": "15"}},
            r'train\.epochs = "15" is not allowed; expected a positive integer',
        ),
        ({"train": {"epochs": 1.5}}, r"train\.epochs = 1\.5 .* a positive integer"),
        ({"train": {"epochs": True}}, r"train\.epochs = true"),
        ({"train": "fast"}, r'train = "fast" .* a table \[train\]'),
        (
            {"grid": {"hidden": []}},
            r"grid\.hidden = \[\] .* non-empty list of distinct positive integers",
        ),
        ({"grid": {"hidden": 400}}, r"grid\.hidden = 400 .* non-empty list"),
        (
            {"grid": {"latent": [100, 100]}},
            r"grid\.latent = \[100, 100\] .* \(100 is listed twice\)",
        ),
        ({"grid": {"lr": [1, 1.0]}}, r"grid\.lr = \[1, 1\.0\] .* \(1\.0 is listed twice\)"),
        ({"grid": {"hidden": [400.5]}}, r"grid\.hidden = 400\.5 .* positive integers"),
        ({"grid": {"lr": ["fast"]}}, r'grid\.lr = "fast" .* positive numbers'),
        ({"train": {"epochs": 0}}, r"train\.epochs = 0 .* a positive integer"),
        ({"train": {"batch_size": -5}}, r"train\.batch_size = -5"),
        ({"grid": {"hidden": [0, 400]}}, r"grid\.hidden = 0 .* positive integers"),
        ({"grid": {"latent": [-2]}}, r"grid\.latent = -2"),
        ({"grid": {"lr": [0.0]}}, r"grid\.lr = 0\.0 .* positive numbers"),
        ({"grid": {"clip": [-1.0]}}, r"grid\.clip = -1\.0 .* positive numbers"),
        (
            {"data": {"fractions": [0.8, 0.1, 0.2]}},
            r"data\.fractions = \[0\.8, 0\.1, 0\.2\] .* sum to 1",
        ),
        ({"data": {"fractions": [0.8, 0.2]}}, r"data\.fractions .* three numbers"),
        (
            {"data": {"fractions": [0.99999, 0.000005, 0.000005]}},
            r"data\.fractions = .* expected shares that leave no split empty",
        ),
        ({"data": {"fractions": [1.0, 0.0, 0.0]}}, r"data\.fractions .* in \(0, 1\)"),
        (
            {"train": {"batch_size": 56_001}},
            r"train\.batch_size = 56001 .* at most the 56000 images",
        ),
        (
            {"data": {"limit": 100}, "train": {"batch_size": 100}},
            r"train\.batch_size = 100 .* at most the 80 images",
        ),
        ({"train": {"optimizer": "sgd"}}, r'train\.optimizer = "sgd" .* one of "adam"'),
        ({"data": {"dataset": "cifar10"}}, r'data\.dataset = "cifar10" .* one of "mnist"'),
        ({"data": {"split": "random"}}, r'data\.split = "random" .* one of "holdout", "official"'),
        ({"data": {"split": "official", "limit": 100}}, r"data\.limit = 100 .* \"holdout\" only"),
        ({"seed": -1}, r"seed = -1 .* an integer >= 0"),
        ({"name": "my study!"}, r'name = "my study!"'),
    ],
)
def test_validator_rejects_bad_values_naming_file_key_value_and_allowed(
    raw: dict, match: str
) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=r"^s\.toml: " + match):
        parse(raw)


def test_toml_syntax_error_names_the_line(write_study: Callable[..., Path]) -> None:
    path = write_study("seed = 0\n[train]\nepochs = = 3\n")
    with pytest.raises(InputError, match=r"study\.toml: not valid TOML: .*line 3"):
        load_study(path)


def test_missing_study_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.toml: study file not found"):
        load_study(tmp_path / "nope.toml")


def test_official_split_sizes() -> None:
    study = parse({"data": {"split": "official"}})
    assert split_sizes(study.data) == (54_000, 6_000, 10_000)  # type: ignore[attr-defined]


def test_plan_prints_every_trial_and_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(STUDIES / "seed.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "54 trials"
    keys = [line.split()[0] for line in lines[1:-1]]
    assert len(keys) == len(set(keys)) == 54


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nepochs = 0\n", "train.epochs = 0 is not allowed; expected a positive integer"),
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[grid]\nhidden = [\n", "not valid TOML"),
    ],
)
def test_cli_bad_study_is_one_line_and_exit_2(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write_study(text)
    for command in ("plan", "run"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
        assert err.startswith(f"vaegrid: error: {path}: ")


def test_cli_missing_file_and_bad_arguments_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: study file not found" in capsys.readouterr().err
    assert main(["run", str(STUDIES / "smoke.toml"), "--workers-per-device", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid int value: 'zero'" in err
    assert main(["run", str(STUDIES / "smoke.toml"), "--devices", "tpu:0"]) == 2
    assert "'tpu:0' is not a device here; visible: cpu" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
