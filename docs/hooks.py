"""MkDocs hook: the reference pages that are generated from the code, never copied.

``reference/settings.md`` is every setting of ``vaegrid.study.axes.AXES`` (type, the
seed's value, what is allowed, where it applies) and the study file's bounds from
``vaegrid.study.load``; ``reference/cli-generated.md`` is ``vaegrid``'s own parser's help
for every command, and the exit codes from ``vaegrid.cli.main``; ``reference/refusals.md``
is every one-line refusal the code can raise (each ``InputError`` message, read from the
source with ``ast``, by module and function); ``reference/layout.md`` is the study folder
as ``vaegrid/layout.py`` (the one place that names its paths) declares it. All are built in
memory at each ``mkdocs build`` (``make docs``): edit the code, and the pages follow.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/settings.md", content=settings_page()))
    files.append(File.generated(config, "reference/cli-generated.md", content=cli_page()))
    files.append(File.generated(config, "reference/refusals.md", content=refusals_page()))
    files.append(File.generated(config, "reference/layout.md", content=layout_page()))
    return files


def settings_page() -> str:
    from vaegrid.study import files, load, validate
    from vaegrid.study.axes import AXES, REPEATS_MAX, SAMPLES_MAX, format_value

    rows = []
    for a in AXES:
        if a.kind is str:
            allowed = ", ".join(f"`{c}`" for c in a.choices)
        else:
            kind = "integer" if a.kind is int else "number"
            allowed = f"{kind} {a.low:g} to {a.high:g}" + (" (log scale)" if a.log else "")
        where = f"{a.applies[0]} = {' or '.join(a.applies[1])}" if a.applies else "every trial"
        seed = ", ".join(format_value(v) for v in a.default)
        section = (
            "`[grid]` list, or `[train]` value" if a.searched
            else "`[train]` value, or `[grid]` list"
        )  # fmt: skip
        cells = [f"`{a.name}`", a.label or a.name, seed, allowed, where, section]
        rows.append("| " + " | ".join(cells) + " |")
    bounds = [
        ("a study file", f"at most {files.STUDY_FILE_MAX_BYTES:,} bytes of UTF-8 TOML"),
        ("`name`", f"letters, digits, `.`, `_`, `-`; at most {load.NAME_MAX_CHARS} characters"),
        ("`description`", f"at most {load.DESCRIPTION_MAX_CHARS:,} characters"),
        ("`seed`", "0 to 2^63 - 1"),
        ("a `[grid]` list", f"at most {validate.GRID_VALUES_MAX:,} values"),
        ("the grid", f"at most {load.TRIALS_MAX:,} trials (configs times repeats)"),
        ("`[grid] repeats`", f"1 to {REPEATS_MAX}"),
        ("`[rank] nll_samples`", f"0 (none) to {SAMPLES_MAX:,}"),
        ("a model", f"at most {validate.MODEL_PARAMETERS_MAX:,} parameters"),
        ("a training step", f"at most {validate.TRAINING_MB_MAX:,} MB (estimated)"),
        (
            "`--set`",
            f"at most {files.OVERRIDES_MAX} items of at most "
            f"{files.OVERRIDE_MAX_CHARS:,} characters each",
        ),
    ]
    return "\n".join(
        [
            "# Settings",
            "",
            "Every setting a trial has, generated from `vaegrid/study/axes.py` (`AXES`, the one "
            "place settings are declared). A study names a setting in `[train]` to fix it or in "
            "`[grid]` as a list to search it; a setting it never names takes the seed's value, "
            "and the seed's searched settings (hidden, latent, lr, clip) are searched over the "
            "seed's lists. A setting that applies only where another takes some value (an mlp's "
            "depth) records a neutral value elsewhere. Installed plug-ins add their own.",
            "",
            "| setting | what | the seed's | allowed | applies to | where |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "## Bounds of a study file",
            "",
            "Generated from `vaegrid/study/` (`load.py`, `files.py`, `validate.py`). Anything "
            "outside is refused in one line naming the file, the key, the value and what is "
            "allowed (exit 2, nothing written).",
            "",
            "| what | allowed |",
            "|---|---|",
            *(f"| {w} | {b} |" for w, b in bounds),
            "",
        ]
    )


def cli_page() -> str:
    from vaegrid import cli

    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [
        "# Command line (generated)",
        "",
        "`vaegrid`'s own help, generated from its parser (`vaegrid/cli.py`) at each docs "
        "build. [Exit codes and refusals](cli.md) explains each command's output.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
        "## Exit codes",
        "",
        inspect.getdoc(cli.main) or "",
        "",
    ]
    for name, command in sub.choices.items():
        out += [f"## vaegrid {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _template(node: ast.expr) -> str:
    """A message as its source builds it, each computed part shown as ``{what}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_template(v) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        conversion = "" if node.conversion == -1 else "!" + chr(node.conversion)
        return "{" + ast.unparse(node.value) + conversion + "}"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template(node.left) + _template(node.right)
    return "{" + ast.unparse(node) + "}"


REFUSALS = ("InputError", "DataGone")  # DataGone: an InputError that a sweep also waits out


def refusals(root: Path) -> list[tuple[str, str, str]]:
    """Every ``InputError(message)`` under ``root``: (module, function, message template),
    in source order."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and call.args):
                continue
            func = call.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name not in REFUSALS:
                continue
            inside = [f for f in functions if f.lineno <= call.lineno <= (f.end_lineno or 0)]
            where = max(inside, key=lambda f: f.lineno).name if inside else "(module)"
            found.append((module, where, _template(call.args[0])))
    return sorted(found, key=lambda r: r[0])


def refusals_page() -> str:
    import vaegrid

    found = refusals(Path(vaegrid.__file__).parent)
    out = [
        "# Every refusal (generated)",
        "",
        f"The {len(found)} one-line refusals in vaegrid's source (exit 2, nothing written), "
        "read from the code at each docs build: every `InputError` message, with its "
        "computed parts as `{...}` (the file, the key, the value the user gave). "
        "[Exit codes and refusals](cli.md) groups them by input and says why each exists.",
        "",
    ]
    module = None
    for mod, function, message in found:
        if mod != module:
            out += ["", f"## `{mod}`", "", "| where | message |", "|---|---|"]
            module = mod
        text = " ".join(message.split()).replace("|", "\\|").replace("`", "'")
        out.append(f"| `{function}` | `{text}` |")
    return "\n".join(out) + "\n"


def layout_page() -> str:
    from vaegrid import layout

    tree = (inspect.getdoc(layout) or "").split("\n\n")[1]
    return "\n".join(
        [
            "# Study folder (generated)",
            "",
            "Every path vaegrid keeps in a study folder, as `vaegrid/layout.py` declares them "
            "(driver, workers, training, report and storage all take their paths from it). "
            "[Results layout](results.md) says what each CSV column and figure holds.",
            "",
            "```text",
            *(line[4:] for line in tree.splitlines()),
            "```",
            "",
            "The report's tables: " + ", ".join(f"`{t}.csv`" for t in layout.TABLES) + ".",
            "",
        ]
    )
