"""MkDocs hook: the reference pages that are generated from the code, never copied.

``reference/settings.md`` is every setting of ``vaegrid.spec.axes.AXES`` (type, the
seed's value, what is allowed, where it applies) and the study file's bounds from
``vaegrid.spec.load``; ``reference/cli-generated.md`` is ``vaegrid``'s own parser's help
for every command, and the exit codes from ``vaegrid.cli.main``. Both are built in memory
at each ``mkdocs build`` (``make docs``): edit the code, and the pages follow.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from mkdocs.structure.files import File, Files


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/settings.md", content=settings_page()))
    files.append(File.generated(config, "reference/cli-generated.md", content=cli_page()))
    return files


def settings_page() -> str:
    from vaegrid.spec import load
    from vaegrid.spec.axes import AXES, REPEATS_MAX, SAMPLES_MAX, format_value

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
        ("a study file", f"at most {load.STUDY_FILE_MAX_BYTES:,} bytes of UTF-8 TOML"),
        ("`name`", f"letters, digits, `.`, `_`, `-`; at most {load.NAME_MAX_CHARS} characters"),
        ("`description`", f"at most {load.DESCRIPTION_MAX_CHARS:,} characters"),
        ("`seed`", "0 to 2^63 - 1"),
        ("a `[grid]` list", f"at most {load.GRID_VALUES_MAX:,} values"),
        ("the grid", f"at most {load.TRIALS_MAX:,} trials (configs times repeats)"),
        ("`[grid] repeats`", f"1 to {REPEATS_MAX}"),
        ("`[rank] nll_samples`", f"0 (none) to {SAMPLES_MAX:,}"),
        ("a model", f"at most {load.MODEL_PARAMETERS_MAX:,} parameters"),
        ("a training step", f"at most {load.TRAINING_MB_MAX:,} MB (estimated)"),
        (
            "`--set`",
            f"at most {load.OVERRIDES_MAX} items of at most "
            f"{load.OVERRIDE_MAX_CHARS:,} characters each",
        ),
    ]
    return "\n".join(
        [
            "# Settings",
            "",
            "Every setting a trial has, generated from `vaegrid/spec/axes.py` (`AXES`, the one "
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
            "Generated from `vaegrid/spec/load.py`. Anything outside is refused in one line "
            "naming the file, the key, the value and what is allowed (exit 2, nothing written).",
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
