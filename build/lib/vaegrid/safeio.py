"""Files inside a study folder: never through a symbolic link, never anything but a regular
file, always written atomically.

A results folder is shared, long-lived and sometimes prepared by someone else. A link
planted at ``driver.lock`` or ``checkpoint.pt`` would make vaegrid truncate or overwrite
whatever it points to. So every file vaegrid opens inside a study folder goes through this
module: opened with ``O_NOFOLLOW``, written through a fresh temporary file that is renamed
over the target (rename replaces a link, it never writes through one), and the folder
itself is checked once, before anything is written, by :func:`check_study_dir`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vaegrid.errors import InputError

# Filesystems that are not storage: a study there is a mistake (or an attack), never a study.
PSEUDO_FILESYSTEMS = frozenset(
    [
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "mqueue",
        "hugetlbfs",
        "binfmt_misc",
        "autofs",
        "efivarfs",
    ]
)


def _shown(path: Path) -> str:
    """A path as one line of a message: control characters escaped (a newline in a folder
    name must not make a second line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)[1:-1]


def refuse_link(path: Path) -> None:
    """Raise InputError if ``path`` is a symbolic link."""
    if path.is_symlink():
        raise InputError(
            f"{path}: is a symbolic link; vaegrid never follows links inside a study folder "
            "(remove the link, or point --results at the real folder)"
        )


def mount_type(path: Path) -> str:
    """The filesystem type of the mount that holds ``path`` (from /proc/self/mountinfo)."""
    path = path.resolve()
    best, kind = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best) and after:
            best, kind = point, after[0]
    return kind


def check_results_dir(results: Path, what: str = "--results") -> None:
    """Refuse a results folder (``what`` names it for messages) that is a file, a link, or
    on a pseudo-filesystem (/proc...).

    Raises:
        InputError: naming the folder and what is wrong.
    """
    if results.is_symlink() and not results.exists():
        raise InputError(f"{what}: {results} is a dangling symbolic link")
    if results.exists() and not results.is_dir():
        raise InputError(f"{what}: {results} is not a folder")
    existing = results
    while not existing.exists():
        existing = existing.parent
    kind = mount_type(existing)
    if kind in PSEUDO_FILESYSTEMS:
        raise InputError(
            f"{what}: {results} is on a {kind} filesystem, which holds no files; "
            "choose a folder on a disk"
        )


def missing(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet (what a refused run must remove)."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def check_study_dir(results: Path, study_dir: Path, what: str = "--results") -> None:
    """Refuse a study folder that escapes ``results`` or holds a symbolic link anywhere.

    Walks the whole folder without following links (a study folder holds a few files per
    trial: milliseconds even for thousands of trials).

    Raises:
        InputError: the folder is a file or a link, resolves outside ``results``, or any
            entry below it is a link.
    """
    check_results_dir(results, what)
    refuse_link(study_dir)
    if study_dir.exists() and not study_dir.is_dir():
        raise InputError(f"{study_dir}: is a file, not a study folder")
    if not study_dir.resolve().is_relative_to(results.resolve()):
        raise InputError(f"{study_dir}: resolves outside {what} {results}")
    if not study_dir.exists():
        return
    for folder, dirs, files in os.walk(study_dir, followlinks=False):
        for name in dirs + files:
            refuse_link(Path(folder) / name)
        for name in files:
            refuse_special(Path(folder) / name)


def refuse_special(path: Path) -> None:
    """Raise InputError if ``path`` exists and is neither a regular file nor a folder (a
    FIFO would block whoever opens it, a device or socket is no file of vaegrid's)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise InputError(
            f"{_shown(path)}: is not a regular file (a FIFO, socket or device); vaegrid reads "
            "and writes only regular files in a study folder"
        )


def ensure_dir(path: Path) -> Path:
    """``mkdir -p`` that refuses a link at ``path`` and reports failures as one line."""
    refuse_link(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{path}: exists and is not a folder") from None
    except OSError as e:
        raise InputError(f"{path}: cannot create folder ({e.strerror})") from None
    return path


def open_fd(path: Path, flags: int, mode: int = 0o644, follow: bool = False) -> int:
    """``os.open`` of a regular file, with ``O_NOFOLLOW`` unless ``follow``: a link, a
    folder, a FIFO, a socket or a device is refused with one line, and nothing blocks
    (the file is opened non-blocking, checked, then set blocking).

    Raises:
        InputError: ``path`` is not a regular file, or cannot be opened (with the reason).
    """
    nofollow = 0 if follow else os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | nofollow | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            refuse_link(path)
        if e.errno == errno.EISDIR or path.is_dir():
            raise InputError(f"{_shown(path)}: is a folder, expected a file") from None
        if e.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            refuse_special(path)
        raise InputError(f"{_shown(path)}: cannot open ({e.strerror})") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        if stat.S_ISDIR(kind):
            raise InputError(f"{_shown(path)}: is a folder, expected a file")
        refuse_special(path)
        raise InputError(f"{_shown(path)}: is not a regular file")  # replaced since lstat
    os.set_blocking(fd, True)
    return fd


@contextmanager
def open_file(path: Path, mode: str = "rb") -> Iterator[IO[Any]]:
    """A file object on ``path`` opened without following links (modes r, rb, a, ab)."""
    flags = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}[mode[0]]
    fd = open_fd(path, flags)
    text = "b" not in mode
    with os.fdopen(fd, mode, encoding="utf-8" if text else None) as f:
        yield f


def read_bytes(path: Path) -> bytes:
    with open_file(path, "rb") as f:
        data: bytes = f.read()
    return data


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data``: written to a fresh temporary file, then renamed.

    A kill at any moment leaves the old file or the new one, never half of one; a link at
    ``path`` is replaced, never written through.
    """
    payload = data.encode() if isinstance(data, str) else data
    # A name of its own per write (O_EXCL, never a link): two processes writing one file
    # never share a temporary file.
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"{_shown(path)}: cannot write ({e.strerror})") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_with(path: Path, write: Any, *args: Any, **kwargs: Any) -> None:
    """``write(*args, buffer, **kwargs)`` into memory, then :func:`write_atomic` to ``path``.

    For writers that take a file object: ``torch.save``, ``DataFrame.to_csv``,
    ``Figure.savefig``, ``torchvision.utils.save_image``.
    """
    buffer = io.BytesIO()
    write(*args, buffer, **kwargs)
    write_atomic(path, buffer.getvalue())
