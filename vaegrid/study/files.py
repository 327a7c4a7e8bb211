"""A study file read as the hostile input it is: at most 1 MiB of UTF-8 TOML from a regular
file (no FIFO, no device), lines of bounded dotted keys, bounded nesting and integers; and
``--set`` items applied to it as if it said them. What it says is validated by load.py."""

from __future__ import annotations

import codecs
import os
import re
import stat
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaegrid.errors import InputError
from vaegrid.study.validate import show

# Largest study file read: a study is a few lines of TOML; read at most this + 1 byte.
STUDY_FILE_MAX_BYTES = 1 << 20


# Most '.' on one line: tomllib's time grows with the square of a dotted key's length
# (50,000 parts: 40 s); 1,000 grid values of one dot each still fit.
DOTS_PER_LINE_MAX = 2_000


# Deepest nesting of tables and lists: a study needs 2 ([data] fractions = [...]).
NESTING_MAX = 8


# Integers anywhere in the file hold at most this many bits (sign apart).
INT_BITS_MAX = 64


# --set: at most this many items, each value at most this many characters.
OVERRIDES_MAX = 100
OVERRIDE_MAX_CHARS = 10_000


def read_toml(path: Path) -> dict[str, Any]:
    """The study file's TOML.

    Raises:
        InputError: missing, unreadable, too large, not UTF-8, not TOML, nested too
            deeply, or an integer too long to read.
    """
    text = _read_text(path)
    _check_lines(path, text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per level of [ or {
        raise InputError(
            f"{path}: not valid TOML for a study: nested too deeply; "
            f"expected tables and lists at most {NESTING_MAX} deep"
        ) from None
    except ValueError:  # tomllib lets int() refuse a literal of over 4300 digits itself
        raise InputError(
            f"{path}: not valid TOML for a study: an integer has too many digits; "
            f"expected integers of at most {INT_BITS_MAX} bits"
        ) from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """Apply ``--set section.key=value`` items to a study's parsed TOML, in order.

    Raises:
        InputError: an item that is not ``[section.]key=value`` with a TOML value (or a bare
            word), or that names a section the file holds as a value.
    """
    if len(overrides) > OVERRIDES_MAX:
        raise InputError(f"--set: {len(overrides)} items; expected at most {OVERRIDES_MAX}")
    for item in overrides:
        shown = show(item)
        where, sep, text = item.partition("=")
        parts = where.strip().split(".")
        if not sep or len(parts) > 2 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p)
                                                for p in parts):  # fmt: skip
            raise InputError(
                f"--set: {shown} is not allowed; expected section.key=value or key=value, "
                "e.g. --set train.epochs=5 or --set 'grid.lr=[1e-3, 1e-2]'"
            )
        if len(text) > OVERRIDE_MAX_CHARS:
            raise InputError(f"--set: {shown}: a value of at most {OVERRIDE_MAX_CHARS} characters")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError, ValueError):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", text.strip()):
                raise InputError(
                    f"--set: {shown}: the value is not TOML (a number, a quoted string, a list "
                    "such as [1, 2]) nor a bare word"
                ) from None
            value = text.strip()  # a bare word: data.binarize=dynamic, train.model=mlp
        table: dict[str, Any] = raw
        if len(parts) == 2:
            found = raw.setdefault(parts[0], {})
            if not isinstance(found, dict):
                raise InputError(f"--set: {shown}: {parts[0]} is a value, not a section")
            table = found
            other = {"train": "grid", "grid": "train"}.get(parts[0])
            moved = raw.get(other) if other else None
            if isinstance(moved, dict):  # --set grid.lr=[...] on a file that fixes lr:
                moved.pop(parts[1], None)  # the setting moves, as an edit would move it
        table[parts[-1]] = value


def _read_text(path: Path) -> str:
    """The file's text: at most STUDY_FILE_MAX_BYTES of UTF-8, a leading BOM dropped."""
    try:
        # Non-blocking, then checked: a FIFO or a device would block or never end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{path}: study file not found") from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(f"{path}: cannot read study file: {reason}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(
                f"{path}: not a regular file (a folder, FIFO or device); expected a TOML file"
            )
        os.set_blocking(fd, True)
        try:
            # One byte more than allowed tells "too large" without reading a huge file.
            data = f.read(STUDY_FILE_MAX_BYTES + 1)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise InputError(f"{path}: cannot read study file: {reason}") from None
    if len(data) > STUDY_FILE_MAX_BYTES:
        raise InputError(
            f"{path}: study file is larger than {STUDY_FILE_MAX_BYTES} bytes (1 MiB); "
            "expected a few lines of TOML"
        )
    # Editors on Windows save UTF-8 with a BOM; tomllib would call it an "Invalid statement".
    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    try:
        return data[len(bom) :].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = len(bom) + e.start  # counted from 0 at the file's first byte, as od/xxd do
        raise InputError(
            f"{path}: not UTF-8 text (byte {offset}); expected a TOML file saved as UTF-8"
        ) from None


def _check_lines(path: Path, text: str) -> None:
    """Refuse a line with more than DOTS_PER_LINE_MAX dots, before tomllib reads it."""
    # A dotted key lies on one line (TOML separates its parts by spaces and tabs only),
    # so its parts are at most the dots of its line + 1. TOML ends lines with "\n" only.
    for number, line in enumerate(text.split("\n"), start=1):
        dots = line.count(".")
        if dots > DOTS_PER_LINE_MAX:
            raise InputError(
                f"{path}: line {number} holds {dots} '.' characters; expected at most "
                f"{DOTS_PER_LINE_MAX} on a line (dotted keys that long take minutes to read)"
            )
