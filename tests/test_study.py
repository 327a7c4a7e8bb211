from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import plan_table

from vaegrid.cli import main
from vaegrid.errors import InputError
from vaegrid.study.axes import AXES
from vaegrid.study.core import (
    DataSpec,
    HalvingSpec,
    TrialConfig,
    expand,
    split_sizes,
)
from vaegrid.study.load import load_study, parse_study
from vaegrid.study.sizes import parameter_count
from vaegrid.train.model import make_model

STUDIES = Path(__file__).parent.parent / "studies"
# The shipped studies' first key and the hash of all their keys (model linear-vae-2).
SEED_FIRST, SEED_DIGEST = "a34b3b379904", "276865742c095fc0"
SMOKE_FIRST, SMOKE_DIGEST = "1ea34b892503", "88a4cfe0e7ce8674"


def parse(text_or_raw: dict) -> object:  # type: ignore[type-arg]
    return parse_study(text_or_raw, source="s.toml", default_name="s")


def test_seed_study_is_the_seed_grid_with_54_unique_keys() -> None:
    study = load_study(STUDIES / "seed.toml")
    fixed = study.fingerprint()["train"]
    assert (fixed["epochs"], fixed["batch_size"], fixed["optimizer"]) == (15, 1000, "adam")
    assert study.searched == ("hidden", "latent", "lr", "clip") and study.repeats == 1
    grid = [study.values(n) for n in study.searched]
    assert grid == [(400, 600, 800), (100, 200, 400), (1.0, 1e-5, 3e-2), (1.0, 2e-4)]
    assert study.data.fractions == (0.8, 0.1, 0.1) and study.seed == 0
    assert split_sizes(study.data) == (56_000, 7_000, 7_000)
    keys = [t.key for t in expand(study)]
    assert len(keys) == 54 == len(set(keys))


def test_keys_do_not_depend_on_the_order_of_values() -> None:
    a = parse({"grid": {"hidden": [400, 800], "lr": [1, 1e-3]}})
    b = parse({"grid": {"hidden": [800, 400], "lr": [1e-3, 1.0]}})
    assert sorted(t.key for t in expand(a)) == sorted(t.key for t in expand(b))  # type: ignore[arg-type]


BASE = TrialConfig.make(0, DataSpec(), hidden=400, latent=100, lr=1e-3, clip=1.0)

# One change of every setting a trial computes from: nested fields by their dotted name.
CHANGED = {
    "seed": BASE.replace(seed=1),
    "data.dataset": BASE.replace(data=replace(BASE.data, dataset="emnist")),
    "data.split": BASE.replace(data=replace(BASE.data, split="official")),
    "data.fractions": BASE.replace(data=replace(BASE.data, fractions=(0.7, 0.15, 0.15))),
    "data.limit": BASE.replace(data=replace(BASE.data, limit=6000)),
    "data.binarize": BASE.replace(data=replace(BASE.data, binarize="dynamic")),
    "epochs": BASE.replace(epochs=3),
    "batch_size": BASE.replace(batch_size=500),
    "optimizer": BASE.replace(optimizer="sgd"),
    "momentum": BASE.replace(momentum=0.9),
    "weight_decay": BASE.replace(weight_decay=1e-4),
    "beta": BASE.replace(beta=0.5),
    "repeat": BASE.replace(repeat=1),
    "model": BASE.replace(model="mlp"),
    "hidden": BASE.replace(hidden=600),
    "latent": BASE.replace(latent=200),
    "lr": BASE.replace(lr=3e-2),
    "clip": BASE.replace(clip=2e-4),
}


def test_the_key_test_changes_every_field_of_a_trial_config() -> None:
    # A field added to TrialConfig or DataSpec, or a setting added to AXES, must get its
    # line in CHANGED: the key is the hash of TrialConfig.as_dict().
    names = set()
    for name, value in BASE.as_dict().items():
        names |= {f"{name}.{g}" for g in value} if isinstance(value, dict) else {name}
    assert set(CHANGED) == names
    optional = {a.name for a in AXES if a.optional and a.name != "model"}
    assert set(OPTIONAL) == optional  # left out of a key at their default, changed below


# Settings added after keys existed, each changed where it applies (at its default it is
# left out of the key: a linear elbo trial keeps the key it always had).
MLP, CONV, IWAE = (
    BASE.replace(model="mlp"),
    BASE.replace(model="conv"),
    BASE.replace(objective="iwae"),
)
OPTIONAL = {
    "depth": (MLP, MLP.replace(depth=3)),
    "activation": (MLP, MLP.replace(activation="relu")),
    "channels": (CONV, CONV.replace(channels=16)),
    "objective": (BASE, IWAE),
    "samples": (IWAE, IWAE.replace(samples=50)),
}


@pytest.mark.parametrize("setting", OPTIONAL)
def test_keys_change_with_settings_added_later_where_they_apply(setting: str) -> None:
    base, changed = OPTIONAL[setting]
    assert changed.key != base.key and TrialConfig.from_json(changed.to_json()) == changed
    assert setting not in base.as_dict() and setting in changed.as_dict()


def test_the_seed_study_keeps_the_keys_it_had_before_other_models() -> None:
    # Computed by main before models were a setting (commit 725b802): a linear ELBO trial's
    # key must never change, or every stored study would re-train.
    keys = [t.key for t in expand(parse({}))]  # type: ignore[arg-type]
    assert keys[:3] == ["a34b3b379904", "ab3bfed9326d", "5427b52e7784"]
    assert hashlib.sha256(" ".join(keys).encode()).hexdigest() == (
        "276865742c095fc06e3ee4a77479260d376b928af684e6ec0bd29542d90d7d5b"
    )


@pytest.mark.parametrize("setting", CHANGED)
def test_keys_change_with_any_setting(setting: str) -> None:
    changed = CHANGED[setting]
    assert changed != BASE and changed.key != BASE.key
    others = {c.key for name, c in CHANGED.items() if name != setting}
    assert changed.key not in others


def test_keys_change_with_fixed_settings_of_a_study_file() -> None:
    base = {t.key for t in expand(parse({}))}  # type: ignore[arg-type]
    for raw in ({"seed": 1}, {"train": {"epochs": 3}}, {"data": {"fractions": [0.7, 0.15, 0.15]}}):
        assert base.isdisjoint(t.key for t in expand(parse(raw)))  # type: ignore[arg-type]


def test_keys_of_the_shipped_studies_are_unchanged() -> None:
    # Hashes of every key, as computed when model linear-vae-2 (common random numbers)
    # replaced linear-vae-1, whose seed study keys were 9cb346a38c3c... (digest
    # 25897f9f8b92ba1b): a change here means stored results are no longer found.
    for name, first, digest in (
        ("seed", SEED_FIRST, SEED_DIGEST),
        ("smoke", SMOKE_FIRST, SMOKE_DIGEST),
    ):
        keys = [t.key for t in expand(load_study(STUDIES / f"{name}.toml"))]
        assert keys[0] == first
        assert hashlib.sha256(" ".join(keys).encode()).hexdigest()[:16] == digest


def test_smoke_study_is_a_2x2_grid_on_a_subset() -> None:
    study = load_study(STUDIES / "smoke.toml")
    assert len(expand(study)) == 4 and study.epochs == 2
    assert split_sizes(study.data) == (4_800, 600, 600)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"epochs": 3}, r"unknown key 'epochs'; allowed keys: data, description, grid"),
        (
            {"train": {"epoch": 3}},
            r"unknown key 'train\.epoch'; allowed keys in \[train\]: activation, batch_size",
        ),
        (
            {"grid": {"dropout": [0.1]}},
            r"unknown key 'grid\.dropout'.*a plug-in model's setting\? no installed plug-in",
        ),
        (
            {"train": {"epochs": "15"}},
            r'train\.epochs = "15" is not allowed; expected an integer from 1 to 10000',
        ),
        ({"train": {"epochs": 1.5}}, r"train\.epochs = 1\.5 .* an integer from 1 to"),
        ({"train": {"epochs": True}}, r"train\.epochs = true"),
        ({"train": "fast"}, r'train = "fast" .* a table \[train\]'),
        (
            {"grid": {"hidden": []}},
            r"grid\.hidden = \[\] .* non-empty list of distinct values, each an integer from 1",
        ),
        (
            {"grid": {"hidden": "400"}},
            r'grid\.hidden = "400" .* an integer from 1 to 16384 or a list',
        ),
        (
            {"grid": {"latent": [100, 100]}},
            r"grid\.latent = \[100, 100\] .* \(100 is listed twice\)",
        ),
        ({"grid": {"lr": [1, 1.0]}}, r"grid\.lr = \[1, 1\.0\] .* \(1\.0 is listed twice\)"),
        ({"grid": {"hidden": [400.5]}}, r"grid\.hidden = 400\.5 .* an integer from 1 to 16384"),
        ({"grid": {"lr": ["fast"]}}, r'grid\.lr = "fast" .* a number from 1e-12'),
        ({"train": {"epochs": 0}}, r"train\.epochs = 0 .* an integer from 1 to"),
        ({"train": {"batch_size": -5}}, r"train\.batch_size = -5"),
        ({"grid": {"hidden": [0, 400]}}, r"grid\.hidden = 0 .* an integer from 1 to"),
        ({"grid": {"latent": [-2]}}, r"grid\.latent = -2"),
        ({"grid": {"lr": [0.0]}}, r"grid\.lr = 0\.0 .* a number from 1e-12"),
        ({"grid": {"clip": [-1.0]}}, r"grid\.clip = -1\.0 .* a number from 1e-12"),
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
        (
            {"train": {"optimizer": "rmsprop"}},
            r'train\.optimizer = "rmsprop" .* one of "adam", "adamw", "sgd"',
        ),
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


SEED_FINGERPRINT = (
    '{"model": "linear-vae-2", "seed": 0, "data": {"dataset": "mnist", "split": "holdout", '
    '"fractions": [0.8, 0.1, 0.1], "limit": 0, "binarize": "none"}, "train": {"epochs": 15, '
    '"batch_size": 1000, "optimizer": "adam", "momentum": 0.0, "weight_decay": 0.0, "beta": 1.0}}'
)


def test_halving_is_opt_in_and_changes_no_key() -> None:
    seed = load_study(STUDIES / "seed.toml")
    halving = load_study(STUDIES / "seed-halving.toml")
    assert seed.halving is None and json.dumps(seed.fingerprint()) == SEED_FINGERPRINT
    assert halving.halving == HalvingSpec((1, 3), 0.3333, "val_elbo")
    # the same trials, key by key: a halving study's results compare with the full sweep's
    assert [t.key for t in expand(halving)] == [t.key for t in expand(seed)]
    # its settings are fixed settings (as stored: JSON lists): a stored study is not resumed
    # with other ones
    assert halving.fingerprint() == {
        **seed.fingerprint(),
        "halving": {"rungs": [1, 3], "keep": 0.3333, "metric": "val_elbo"},
    }
    small = parse({"train": {"epochs": 4}, "halving": {"rungs": [3], "keep": 0.5}})
    assert small.halving == HalvingSpec((3,), 0.5, "val_elbo")  # type: ignore[attr-defined]
    recon = {"rungs": [1, 2], "keep": 0.25, "metric": "val_recon"}
    assert parse({"halving": recon}).halving.metric == "val_recon"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("halving", "match"),
    [
        ({"keep": 0.5}, r"halving\.rungs is missing; \[halving\] needs rungs and keep"),
        ({"rungs": [1]}, r"halving\.keep is missing"),
        (
            {"rungs": [], "keep": 0.5},
            r"halving\.rungs = \[\] .* strictly increasing integers from 1 to 14",
        ),
        ({"rungs": [3, 3], "keep": 0.5}, r"halving\.rungs = \[3, 3\] .* strictly increasing"),
        ({"rungs": [5, 2], "keep": 0.5}, r"halving\.rungs = \[5, 2\]"),
        ({"rungs": [0, 2], "keep": 0.5}, r"halving\.rungs = \[0, 2\] .* from 1 to 14"),
        (
            {"rungs": [1, 15], "keep": 0.5},
            r"halving\.rungs = \[1, 15\] .* \(epochs before the last",
        ),
        ({"rungs": [1.0], "keep": 0.5}, r"halving\.rungs = \[1\.0\]"),
        ({"rungs": [True], "keep": 0.5}, r"halving\.rungs = \[True\]"),
        ({"rungs": 3, "keep": 0.5}, r"halving\.rungs = 3 .* a non-empty list"),
        ({"rungs": [1], "keep": 1}, r"halving\.keep = 1 .* between 0 and 1, exclusive"),
        ({"rungs": [1], "keep": 0}, r"halving\.keep = 0 "),
        ({"rungs": [1], "keep": 1.5}, r"halving\.keep = 1\.5 "),
        ({"rungs": [1], "keep": float("nan")}, r"halving\.keep = nan "),
        ({"rungs": [1], "keep": "1/3"}, r'halving\.keep = "1/3" '),
        ({"rungs": [1], "keep": True}, r"halving\.keep = true "),
        (
            {"rungs": [1], "keep": 0.5, "metric": "train_elbo"},
            r'halving\.metric = "train_elbo" .* one of "val_elbo", "val_recon"',
        ),
        (
            {"rungs": [1], "keep": 0.5, "eta": 3},
            r"unknown key 'halving\.eta'; allowed keys in \[halving\]: keep, metric, rungs",
        ),
        ("fast", r'halving = "fast" .* a table \[halving\]'),
    ],
)
def test_bad_halving_is_refused_naming_key_value_and_allowed(halving: object, match: str) -> None:
    with pytest.raises(InputError, match=r"^s\.toml: " + match):
        parse({"halving": halving})


def test_halving_needs_an_epoch_before_the_last() -> None:
    with pytest.raises(InputError, match=r"halving\.rungs = \[1\] .* epochs = 1 leaves no epoch"):
        parse({"train": {"epochs": 1}, "halving": {"rungs": [1], "keep": 0.5}})


def test_a_bad_halving_table_is_one_line_exit_2_and_nothing_written(
    write_study: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_study(
        (STUDIES / "seed-halving.toml").read_text().replace("rungs = [1, 3]", "rungs = [3, 1]")
    )
    args = ["run", str(path), "--results", str(tmp_path / "r"), "--devices", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "halving.rungs = [3, 1] is not allowed" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


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
    assert main(["plan", str(STUDIES / "seed.toml"), "--devices", "cpu"]) == 0
    head, rows, count = plan_table(capsys.readouterr().out)
    assert head == ["key", "hidden", "latent", "lr", "clip"] and count == 54
    keys = [row[0] for row in rows]
    assert len(keys) == len(set(keys)) == 54


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[train]\nepochs = 0\n",
            "train.epochs = 0 is not allowed; expected an integer from 1 to 10000",
        ),
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


# -- bounds: every value from outside is refused beyond what later stages can take -------

FOLDER_NAME = r"expected a folder name of at most 100 characters: a letter or digit, then"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"seed": 2**63}, r"seed = 9223372036854775808 .* an integer >= 0 and < 2\*\*63"),
        ({"seed": 2**64}, r"seed = 18446744073709551616 .* an integer of at most 64 bits"),
        ({"seed": 10**400}, r"seed = <an integer of 1329 bits> .* at most 64 bits"),
        ({"data": {"limit": 2**70}}, r"data\.limit = 1180591620717411303424 .* 64 bits"),
        ({"data": {"fractions": [10**30, 0.1, 0.1]}}, r"data\.fractions = 10{30} .* 64 bits"),
        ({"grid": {"lr": [10**400]}}, r"grid\.lr = <an integer of 1329 bits> .* 64 bits"),
        ({"grid": {"hidden": [-(2**64)]}}, r"grid\.hidden = -18446744073709551616 .* 64 bits"),
        ({"bogus": {"x": 2**64}}, r"bogus\.x = 18446744073709551616 .* 64 bits"),
        ({"data": {"fractions": [2**63, 0.1, 0.1]}}, r"data\.fractions = .* three numbers"),
        ({"grid": {"lr": [2**63]}}, r"grid\.lr = 9223372036854775808 .* from 1e-12 to 1e\+06"),
        ({"name": "."}, r'name = "\." .* ' + FOLDER_NAME),
        ({"name": ".."}, r'name = "\.\." .* ' + FOLDER_NAME),
        ({"name": ".hidden"}, r'name = "\.hidden"'),
        ({"name": "a/b"}, r'name = "a/b"'),
        ({"name": ""}, r'name = ""'),
        ({"name": "a" * 101}, r'name = "a{101}" .* at most 100 characters'),
        ({"name": "caf\u00e9"}, r'name = "caf\\u00e9"'),
        ({"name": "a\nb"}, r'name = "a\\nb"'),
        ({"name": 7}, r"name = 7 is not allowed"),
        ({"description": 5}, r"description = 5 .* a string of at most 10000 characters"),
        ({"description": "x" * 10_001}, r'description = "x{199}\.\.\. \(10003 characters\) is not'),
        ({"train": {"epochs": 10_001}}, r"train\.epochs = 10001 .* an integer from 1 to 10000"),
        ({"data": {"limit": 70_001}}, r"data\.limit = 70001 .* at most 70000, the images of MNIST"),
        ({"grid": {"hidden": [16_385]}}, r"grid\.hidden = 16385 .* an integer from 1 to 16384"),
        ({"grid": {"latent": [4_097]}}, r"grid\.latent = 4097 .* an integer from 1 to 4096"),
        ({"grid": {"lr": [1e-13]}}, r"grid\.lr = 1e-13 .* a number from 1e-12 to 1e\+06"),
        ({"grid": {"lr": [2e6]}}, r"grid\.lr = 2000000\.0 .* from 1e-12 to 1e\+06"),
        ({"grid": {"lr": [float("inf")]}}, r"grid\.lr = inf .* a number from 1e-12"),
        ({"grid": {"clip": [1e-13]}}, r"grid\.clip = 1e-13 .* from 1e-12 to 1e\+12"),
        ({"grid": {"clip": [2e12]}}, r"grid\.clip = 2000000000000\.0 .* from 1e-12 to 1e\+12"),
        (
            {"grid": {"hidden": list(range(1, 1002))}},
            r"grid\.hidden = \[1, 2, .*\.\.\. \(\d+ characters\) .* at most 1000 of them",
        ),
        (
            {"grid": {"hidden": list(range(1, 12)), "latent": list(range(1, 1001))}},
            r"grid = 11 x 1000 x 3 x 2 .* x 1 repeats = 66000 trials is not allowed; "
            r"expected at most 10000",
        ),
        (
            {"grid": {"hidden": [400, 8_000], "latent": [10, 2_000]}},
            r"model linear with hidden = 8000, latent = 2000 has 60,596,784 parameters; "
            r"expected at most 50,000,000",
        ),
        (
            {"train": {"model": "conv", "channels": 512, "hidden": 2_000}},
            r"model conv with hidden = 2000, latent = 400, channels = 512 has 220,067,073 param",
        ),
        ({"train": {"depth": 3}}, r'train\.depth = 3 .* only 2 without model "mlp"'),
        ({"grid": {"channels": [8, 16]}}, r'grid\.channels = \[8, 16\] .* without model "conv"'),
        ({"grid": {"depth": [2]}}, r'grid\.depth = \[2\] .* without model "mlp"'),
        ({"train": {"samples": 50}}, r'train\.samples = 50 .* only 5 without objective "iwae"'),
        (
            {"train": {"objective": "iwae", "beta": 0.5}},
            r'train\.beta = 0\.5 .* only 1 without objective "elbo"',
        ),
        ({"train": {"model": "mlp", "depth": 17}}, r"train\.depth = 17 .* from 1 to 16"),
        ({"train": {"model": "conv", "channels": 0}}, r"train\.channels = 0 .* from 1 to 512"),
        ({"train": {"objective": "iwae", "samples": 5001}}, r"train\.samples = 5001 .* 1 to 5000"),
        ({"train": {"model": "resnet"}}, r'train\.model = "resnet" .* one of "linear"'),
        ({"a" * 20: {"b": 1}, "x\ny": 1}, r"unknown key 'a{20}'"),
        ({"x\ny": 1}, r"""unknown key '"x\\ny"'"""),
    ],
)
def test_validator_refuses_values_beyond_the_bounds(raw: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=r"^s\.toml: " + match) as caught:
        parse(raw)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"seed": 2**63 - 1, "name": "a" * 100, "description": "x" * 10_000},
        {"name": "0.v1_final-B"},
        {"train": {"epochs": 10_000}},
        {"data": {"limit": 70_000}},
        {"grid": {"lr": [1e-12, 1e6], "clip": [1e-12, 1e12, 1]}},
        {"grid": {"hidden": [16_384], "latent": [1]}},
        {"grid": {"hidden": [1], "latent": [4_096]}},
        {
            "grid": {
                "hidden": [*range(1, 11)],
                "latent": [*range(1, 501)],
                "lr": [1, 2],
                "clip": [1],
            }
        },
        {"grid": {"hidden": [*range(1, 1001)], "latent": [*range(1, 11)], "lr": [1], "clip": [1]}},
    ],
)
def test_validator_accepts_values_at_the_bounds(raw: dict) -> None:  # type: ignore[type-arg]
    assert 1 <= len(expand(parse(raw))) <= 10_000  # type: ignore[arg-type]


def test_the_grid_size_is_refused_before_the_grid_is_expanded() -> None:
    # 10**12 trials: expanding them would exhaust memory long before an answer.
    values = {
        "hidden": list(range(1, 1001)),
        "latent": list(range(1, 1001)),
        "lr": [i * 1e-3 for i in range(1, 1001)],
        "clip": [i * 1e-3 for i in range(1, 1001)],
    }
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"grid = 1000 x 1000 x 1000 x 1000 .* 10{12} trials"):
        parse({"grid": values})
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(("hidden", "latent"), [(1, 1), (32, 4), (400, 100), (800, 400)])
@pytest.mark.parametrize(
    "model", [{"model": "linear"}, {"model": "mlp", "depth": 1, "activation": "tanh"},
              {"model": "mlp", "depth": 3, "activation": "relu"},
              {"model": "conv", "channels": 1}, {"model": "conv", "channels": 8}],
)  # fmt: skip
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16), (1, 12, 20)])
def test_parameter_count_is_the_models(
    hidden: int,
    latent: int,
    model: dict,  # type: ignore[type-arg]
    shape: tuple[int, int, int],
) -> None:
    # MNIST's images and a plug-in data set's (colour, not square): counted as built
    settings = {"hidden": hidden, "latent": latent, **model}
    built = make_model(settings, shape)
    assert parameter_count(settings, shape) == sum(p.numel() for p in built.parameters())


def nested_dict(depth: int) -> dict:  # type: ignore[type-arg]
    """{"a": {"a": ... {"a": 1}}}, built without recursion."""
    inner: dict = {"a": 1}  # type: ignore[type-arg]
    for _ in range(depth - 1):
        inner = {"a": inner}
    return inner


def test_validator_refuses_nesting_deeper_than_any_study_needs() -> None:
    with pytest.raises(InputError, match=r"^s\.toml: grid\.a\.a\.a\.a\.a\.a\.a\.a is nested too"):
        parse({"grid": nested_dict(100_000)})
    with pytest.raises(InputError, match=r"^s\.toml: data\.fractions is nested too deeply"):
        parse({"data": {"fractions": [[[[[[[[[[1]]]]]]]]]]}})


# -- the file itself: bytes, size, encoding, TOML that tomllib cannot take -----------------

TOO_DEEP = r"not valid TOML for a study: nested too deeply; expected tables and lists"


def test_a_utf8_byte_order_mark_is_accepted(write_study: Callable[..., Path]) -> None:
    path = write_study()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    study = load_study(path)
    assert study.name == "tiny" and len(expand(study)) == 4


def test_a_study_file_of_exactly_1_mib_is_read(write_study: Callable[..., Path]) -> None:
    path = write_study()
    text = path.read_bytes()
    path.write_bytes(text + b"#" * ((1 << 20) - len(text)))
    assert load_study(path).name == "tiny"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"seed = 0\nname = 'ab\xffc'\n", r"not UTF-8 text \(byte 19\); expected a TOML file"),
        (b"\xef\xbb\xbfseed = 0\n\x80", r"not UTF-8 text \(byte 12\)"),
        (b"\xff\xfes\x00e\x00", r"not UTF-8 text \(byte 0\)"),  # UTF-16
        (b"#" * (1 << 20) + b"\n", r"study file is larger than 1048576 bytes \(1 MiB\)"),
        (
            b"a = " + b"[" * 5000 + b"]" * 5000,
            TOO_DEEP,
        ),
        (
            b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000,
            TOO_DEEP,
        ),
        (b"[grid.a" + b".a" * 20 + b"]\nx = 1\n", r"grid\.a\.a\.a\.a\.a\.a\.a\.a is nested too"),
        (b"a" + b".a" * 50_000 + b" = 1\n", r"line 1 holds 50000 '\.' characters; expected at"),
        (b"seed = " + b"1" * 5000, r"not valid TOML for a study: an integer has too many digits"),
        (b"seed = 0x" + b"f" * 5000, r"seed = <an integer of 20000 bits> .* at most 64 bits"),
        (b"seed = 18446744073709551616\n", r"seed = 18446744073709551616 .* at most 64 bits"),
        (
            b"[data]\nfractions = [" + b"9" * 400 + b", 0.1, 0.1]",
            r"data\.fractions = <an integer of 1329",
        ),
        (b"[grid]\nlr = [1" + b"0" * 400 + b"]", r"grid\.lr = <an integer of 1329 bits>"),
    ],
)
def test_hostile_study_files_are_one_line_and_exit_2(
    write_study: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    message: str,
) -> None:
    path = write_study("")
    path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(InputError, match="^" + str(path).replace(".", r"\.") + ": " + message):
        load_study(path)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vaegrid: error: {path}: ")
    assert time.perf_counter() - start < 2.0  # refused before tomllib takes its time


def test_a_name_from_the_file_name_says_how_to_set_one(
    write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_study("seed = 0\n", file="...toml")  # its stem is ".."
    with pytest.raises(
        InputError,
        match=r'name = "\.\." .* \(this name comes from the file name; a name = "\.\.\." key',
    ):
        load_study(path)
    assert main(["plan", str(path)]) == 2
    assert 'a name = "..." key sets another' in capsys.readouterr().err
    path.write_text('name = "dots"\n')
    assert load_study(path).name == "dots"


def test_any_setting_may_be_searched_and_flows_to_the_trials() -> None:
    study = parse(
        {"train": {"epochs": 2}, "grid": {"beta": [0.5, 1.0], "optimizer": ["adam", "sgd"],
         "momentum": [0.0, 0.9], "weight_decay": 1e-4, "hidden": [400], "latent": [20],
         "lr": [1e-3], "clip": [1.0]}}
    )  # fmt: skip
    assert study.searched == (  # type: ignore[attr-defined]
        "hidden", "latent", "optimizer", "lr", "momentum", "weight_decay", "clip", "beta"
    )  # fmt: skip
    trials = expand(study)  # type: ignore[arg-type]
    # momentum applies to sgd only: adam's two momentum values are one trial
    assert len(trials) == 2 * (1 + 2) == len({t.key for t in trials})
    assert {(t.optimizer, t.momentum) for t in trials} == {
        ("adam", 0.0),
        ("sgd", 0.0),
        ("sgd", 0.9),
    }
    assert {t.beta for t in trials} == {0.5, 1.0} and {t.weight_decay for t in trials} == {1e-4}
    assert {t.epochs for t in trials} == {2}
    # a trial is described by the settings that apply to it: adam has no momentum
    assert trials[0].describe(study.searched) == (  # type: ignore[attr-defined]
        "hidden 400, latent 20, optimizer adam, lr 0.001, weight_decay 0.0001, clip 1, beta 0.5"
    )
    sgd = next(t for t in trials if t.optimizer == "sgd")
    assert "momentum" in sgd.describe(study.searched)  # type: ignore[attr-defined]


def test_a_fixed_setting_is_in_the_fingerprint_and_a_searched_one_is_not() -> None:
    fixed = parse({"train": {"beta": 0.5}})
    searched = parse({"grid": {"beta": [0.5]}})
    assert fixed.fingerprint()["train"]["beta"] == 0.5  # type: ignore[attr-defined]
    assert "beta" not in searched.fingerprint()["train"]  # type: ignore[attr-defined]
    assert "beta" in searched.searched and "beta" not in fixed.searched  # type: ignore[attr-defined]
    # the same trials either way: where a setting is written does not change what it computes
    keys = {t.key for t in expand(fixed)}  # type: ignore[arg-type]
    assert keys == {t.key for t in expand(searched)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"train": {"lr": 0.1}, "grid": {"lr": [0.1]}}, r"lr is set in both \[train\] and"),
        ({"train": {"beta": [0.5, 1.0]}}, r"train\.beta = \[0\.5, 1\.0\] .* goes in \[grid\]"),
        ({"grid": {"beta": [-1.0]}}, r"grid\.beta = -1\.0 .* a number from 0 to 10000"),
        ({"grid": {"momentum": [1.0]}}, r"grid\.momentum = 1\.0 .* a number from 0 to 0\.999"),
        ({"grid": {"optimizer": ["adam", "lion"]}}, r'grid\.optimizer = "lion" .* one of "adam"'),
        ({"grid": {"batch_size": [100, 56_001]}}, r"grid\.batch_size = 56001 .* at most the 56000"),
        ({"grid": {"repeats": 0}}, r"grid\.repeats = 0 .* a positive integer up to 100"),
        ({"grid": {"repeats": 101}}, r"grid\.repeats = 101"),
        ({"grid": {"repeats": [2]}}, r"grid\.repeats = \[2\]"),
        ({"grid": {"lr": [1e-3] * 1, "hidden": list(range(1, 201)), "repeats": 100}},
         r"200 x 3 x 1 x 2 values of hidden, latent, lr, clip x 100 repeats = 120000 trials"),
        ({"data": {"binarize": "otsu"}}, r'data\.binarize = "otsu" .* one of "none", "dynamic"'),
        ({"grid": {"momentum": [0.0, 0.9]}}, r"grid\.momentum = \[0\.0, 0\.9\] .* only 0 without"),
        ({"train": {"momentum": 0.9}}, r'train\.momentum = 0\.9 is not allowed.* optimizer "sgd"'),
        ({"data": {"dataset": "emnist"}}, r'data\.dataset = "emnist" .* "mnist", "fashion-mnist"'),
        ({"grid": {"repeats": 2}, "halving": {"rungs": [1], "keep": 0.5}},
         r"\[halving\] with repeats = 2 is not supported"),
        ({"grid": {"epochs": [2, 3]}, "halving": {"rungs": [1], "keep": 0.5}},
         r"\[halving\] with several epochs values is not supported"),
    ],
)  # fmt: skip
def test_grid_settings_are_checked_in_one_line(raw: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=r"^s\.toml: .*" + match) as caught:
        parse(raw)
    assert "\n" not in str(caught.value)


def test_repeats_run_every_config_with_its_own_seeds_and_share_the_config() -> None:
    one = expand(parse({"grid": {"hidden": [400], "latent": [20]}}))  # type: ignore[arg-type]
    three = expand(parse({"grid": {"hidden": [400], "latent": [20], "repeats": 3}}))  # type: ignore[arg-type]
    assert len(three) == 3 * len(one) == 3 * 6
    assert [t.key for t in three[: len(one)]] == [t.key for t in one]  # repeat 0 first, as before
    assert [t.repeat for t in three] == [0] * 6 + [1] * 6 + [2] * 6
    assert len({t.key for t in three}) == 18
    assert {t.config_id for t in three} == {t.key for t in one}  # a config's id: its repeat 0


def test_data_settings_change_the_fingerprint_and_every_key() -> None:
    base = parse({})
    for data in ({"binarize": "dynamic"}, {"binarize": "static"}, {"dataset": "fashion-mnist"}):
        other = parse({"data": data})
        assert other.fingerprint() != base.fingerprint()  # type: ignore[attr-defined]
        assert {t.key for t in expand(other)}.isdisjoint(t.key for t in expand(base))  # type: ignore[arg-type]


def test_the_trial_cap_counts_distinct_trials_a_setting_counting_only_where_it_applies() -> None:
    base = {"hidden": [16], "latent": [4], "lr": [1e-3], "clip": [1.0]}
    # linear + conv x 512 channels x elbo + iwae x 9 samples: (1 + 512) x (1 + 9) = 5,130
    grid = {**base, "model": ["linear", "conv"], "channels": list(range(1, 513)),
            "objective": ["elbo", "iwae"], "samples": list(range(1, 10))}  # fmt: skip
    study = parse({"train": {"batch_size": 20}, "grid": grid})  # type: ignore[arg-type]
    assert len(expand(study)) == 5_130  # type: ignore[arg-type]
    grid["samples"] = list(range(1, 21))  # (1 + 512) x (1 + 20) = 10,773: over the cap
    with pytest.raises(InputError, match=r"= 40960 combinations, 10773 distinct trials"):
        parse({"train": {"batch_size": 20}, "grid": grid})


def test_a_plugin_data_sets_images_count_in_each_workers_memory() -> None:
    # Each slot's worker holds the float32 splits (and as much again while making them):
    # beyond MNIST's, which the worker's measured memory already counts.
    from vaegrid.study.core import Probed
    from vaegrid.study.datasets import Images

    probed = Probed.of(parse({}))
    assert probed is not None and probed.data_mb == 0  # MNIST
    big = Probed(Images((3, 32, 32), 90_000, 10_000))
    assert big.data_mb == 2 * 4 * (100_000 * 3072 - 70_000 * 784) // (1 << 20)  # 1,925 MB
    assert Probed(Images((1, 8, 8), 100, 0)).data_mb == 0


def test_a_study_holds_what_its_file_says_not_what_a_probe_found() -> None:
    # The probe's answers (a plug-in data set's images, plug-in models' work) are a Probed
    # of their own: a study compares, pickles and hashes by its file alone.
    import dataclasses

    from vaegrid.study.core import Probed, Study

    fields = {f.name for f in dataclasses.fields(Study)}
    assert not fields & {"images", "plugin_work", "shape"}, fields
    study = parse({})
    assert Probed.of(study) == Probed.of(parse({}))
    assert Probed.of(replace(study, data=replace(study.data, dataset="mine"))) is None


def _sampled(text: str, tmp_path: Path) -> list[TrialConfig]:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return expand(load_study(path))


GRID = """
[grid]
hidden = [100, 200, 300, 400]
latent = [10, 20, 30]
lr = [1e-3, 1e-2]
clip = [1.0]
"""


def test_sample_draws_a_deterministic_subset_that_grows_by_keeping_its_first_configs(
    tmp_path: Path,
) -> None:
    full = {c.key for c in _sampled(GRID, tmp_path)}
    assert len(full) == 24
    draws = [_sampled(GRID + f"[sample]\nconfigs = {n}\n", tmp_path) for n in (1, 5, 12, 24)]
    keys = [[c.key for c in d] for d in draws]
    assert [len(k) for k in keys] == [1, 5, 12, 24] and set(keys[-1]) == full
    for smaller, larger in itertools.pairwise(keys):
        assert set(smaller) < set(larger)  # raising N keeps the first N
    assert keys[1] == [c.key for c in _sampled(GRID + "[sample]\nconfigs = 5\n", tmp_path)]
    other = {c.key for c in _sampled(GRID + "[sample]\nconfigs = 5\nseed = 1\n", tmp_path)}
    assert other != set(keys[1])  # another seed, another draw
    # with repeats: each drawn config, every repeat; the configs drawn are the same
    grid = GRID.replace("clip = [1.0]", "clip = [1.0]\nrepeats = 3")
    repeated = _sampled(grid + "[sample]\nconfigs = 5\n", tmp_path)
    assert len(repeated) == 15 and {c.config_id for c in repeated} == set(keys[1])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("configs = 0", "sample.configs = 0 is not allowed"),
        ('configs = "5"', "sample.configs"),
        ("configs = 5\ncolour = 1", "sample.colour"),
        ("configs = 5\nseed = -1", "sample.seed = -1 is not allowed"),
    ],
)
def test_a_bad_sample_is_refused_in_one_line(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        _sampled(GRID + f"[sample]\n{table}\n", tmp_path)


def test_sample_lifts_the_grid_bound_to_what_it_draws(tmp_path: Path) -> None:
    huge = "[grid]\nhidden = [" + ", ".join(str(h) for h in range(1, 201)) + "]\n"
    huge += "latent = [" + ", ".join(str(z) for z in range(1, 101)) + "]\nlr = [1e-3]\n"
    huge += "clip = [1.0]\n"
    with pytest.raises(InputError, match="20000 trials is not allowed"):
        _sampled(huge, tmp_path)
    drawn = _sampled(huge + "[sample]\nconfigs = 50\n", tmp_path)  # 50 of 20,000
    assert len(drawn) == 50 and len({(c.hidden, c.latent) for c in drawn}) == 50
    # what is walked is bounded before merging (an mlp-only depth still multiplies it)
    vast = huge.replace("lr = [1e-3]", "lr = [" + ", ".join(f"{i}e-4" for i in range(1, 61)) + "]")
    with pytest.raises(InputError, match="1,200,000 combinations is not allowed"):
        _sampled(vast + "[sample]\nconfigs = 5\n", tmp_path)
