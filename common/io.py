"""Writes that cannot lose data: a file is replaced whole or not at all.

Every stage output goes through `atomic_write` (a temporary file in the same directory, fsynced, then
renamed over the target), so a crash, a Ctrl-C or a full disk leaves either the previous file or the
new one, never half of one. Stages validate their inputs before the first write, and check with
`check_writable` that every output can be written before they spend time computing it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from common.errors import UserError


class OutputError(UserError):
    """An output path that cannot be written (a file where a directory is due, no permission)."""


class InputError(UserError):
    """An input file that is missing, unreadable or corrupt; the message names it and the fix."""


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it over `path`, on an
    exception (including KeyboardInterrupt) remove it and leave `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # what a plain open() would have made (mkstemp makes 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace `path` by `data` (str is written as UTF-8) whole or not at all."""
    with atomic_write(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str | Path, obj, newline: bool = True) -> None:
    """`json.dumps(obj, indent=2)` (plus a final newline) written atomically."""
    write_atomic(path, json.dumps(obj, indent=2) + ("\n" if newline else ""))


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file's bytes to `dst`, replacing `dst` whole or not at all."""
    with atomic_write(dst) as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def read_json(path: str | Path, fix: str = "delete it and re-run the stage that writes it") -> dict:
    """A JSON object from `path`; InputError naming the file if it is missing, not JSON or not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"'{path}' not found") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"'{path}' is not valid JSON ({type(e).__name__}). Fix: {fix}") from e
    if not isinstance(obj, dict):
        raise InputError(f"'{path}' must hold a JSON object, got {type(obj).__name__}. Fix: {fix}")
    return obj


def check_writable(*paths: str | Path, what: str = "output") -> None:
    """Refuse, before any work, output files that cannot be written: a directory in the way, a file where
    a parent directory is due, or a parent directory without write permission."""
    for p in map(Path, paths):
        if p.is_dir():
            raise OutputError(f"{what} '{p}' is a directory; a file is written there")
        _check_dir(p.parent, p, what)


def check_writable_dir(path: str | Path, what: str = "output directory") -> None:
    """Refuse an output directory that is a file, lies under a file, or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} '{p}' is a file, not a directory")
    _check_dir(p, p, what)


def _check_dir(d: Path, target: Path, what: str) -> None:
    d = d if str(d) else Path(".")
    probe = d
    while not probe.exists():  # the nearest existing ancestor is where the first directory gets made
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} '{target}': '{probe}' is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} '{target}': '{probe}' is not writable")
