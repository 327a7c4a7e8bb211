"""The docs' reference is generated from the code: every setting and every command, as
the code has them (``make docs`` builds the site with ``--strict``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from vaegrid.study.axes import AXES

ROOT = Path(__file__).parent.parent


def _hooks():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_page_lists_every_setting_with_its_bounds() -> None:
    page = _hooks().settings_page()
    for axis in AXES:
        row = next(line for line in page.splitlines() if line.startswith(f"| `{axis.name}` |"))
        if axis.kind is str:
            assert all(f"`{c}`" in row for c in axis.choices), row
        else:
            assert f"{axis.low:g} to {axis.high:g}" in row, row
    assert "at most 10,000 trials" in page  # study/load.py's TRIALS_MAX


def test_the_cli_page_is_the_parsers_help_for_every_command() -> None:
    page = _hooks().cli_page()
    for command in ("plan", "run", "status", "report", "export", "ls", "rm"):
        assert f"## vaegrid {command}" in page and f"usage: vaegrid {command}" in page
    assert "--nll-samples" in page and "--set SECTION.KEY=VALUE" in page
    assert "2 bad input" in page  # the exit codes, from cli.main


def test_readme_is_the_door_not_the_house() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make grid" in readme and "make test" in readme
    for link in ("docs/tutorial/first-study.md", "docs/reference/results.md"):
        assert f"]({link})" in readme and (ROOT / link).is_file()


def test_the_refusals_page_is_every_input_error_of_the_source() -> None:
    hooks = _hooks()
    found = hooks.refusals(ROOT / "vaegrid")
    raised = sum(
        len(re.findall(r"(?<!class )\b(InputError|DataGone)\(", p.read_text()))
        for p in (ROOT / "vaegrid").rglob("*.py")
    )
    assert len(found) == raised > 100  # every call site, none missed by the walk
    page = hooks.refusals_page()
    assert f"The {len(found)} one-line refusals" in page
    # a refusal with computed parts, as its source builds it
    assert "is not allowed; expected cpu or cuda:N" in page and "{args.device!r}" in page
    assert "| `new_plugin` |" in page  # the function that raises it is named


def test_the_layout_page_names_every_path_the_layout_declares() -> None:
    from vaegrid.layout import StudyLayout, TrialFiles

    page = _hooks().layout_page()
    layout, trial = StudyLayout(Path("S")), TrialFiles(Path("S/trials/k"))
    paths = [
        getattr(obj, n) for obj in (layout, trial) for n, v in vars(type(obj)).items()
        if isinstance(v, property) and n != "root"
    ]  # fmt: skip
    assert len(paths) >= 14
    for path in paths:  # the docstring tree cannot fall behind the properties
        assert path.name in page, path.name
