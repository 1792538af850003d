"""Atomic file writes: a file is either its old self or completely the new one.

Everything karras_jax writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the target's folder, which is flushed, fsynced and renamed over the target
(``os.replace`` is atomic on POSIX and Windows within one file system). A failed write (disk
full, file-size limit, permission, read-only folder, Ctrl-C) leaves the previous file
untouched and no temporary file behind, and raises ``OSError`` naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "check_folder_path", "check_writable_folder", "write_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls ``write(f)`` on a temporary binary file and renames it to ``path`` when done.

    Args:
      path: The file to create or replace. Its folder must exist.
      write: Writes the whole content to the open binary file it is given.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      OSError: the write, flush, fsync or rename failed (the message names ``path``); the
        previous file, if any, is unchanged and the temporary file is removed. Any other
        exception from ``write`` propagates after the same clean-up.
    """
    target = Path(os.path.realpath(path))  # write through a symlink, not over it
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {target}: {err.strerror or err}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, _mode_for(target))
        os.replace(temp, target)
    except OSError as err:
        _remove(temp)
        raise OSError(err.errno, f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:  # KeyboardInterrupt too: never leave a temporary file behind
        _remove(temp)
        raise
    return target


def write_json(path: str | os.PathLike, values: Any) -> Path:
    """Writes ``values`` to ``path`` as JSON, atomically (see :func:`atomic_write`).

    Indented one space, keys sorted and a final newline: the same values always give the
    same bytes, so a file rewritten with unchanged content is byte-for-byte unchanged.

    Raises:
      TypeError: ``values`` is not JSON-serialisable (raised before anything is written).
      OSError: the write failed; the previous file is intact.
    """
    text = (json.dumps(values, indent=1, sort_keys=True) + "\n").encode()
    return atomic_write(path, lambda f: f.write(text))


def check_folder_path(folder: str | os.PathLike) -> Path:
    """Refuses a path that is not and cannot become a folder, naming it; creates nothing.

    Raises:
      NotADirectoryError: ``folder`` is a file, or lies below one.
      FileNotFoundError: ``folder`` is a symlink to something that does not exist.
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise FileNotFoundError(errno.ENOENT, f"{folder} is a symlink to {os.readlink(folder)}, "
                                              "which does not exist")
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == folder else f"is below {path}, which is a file"
                raise NotADirectoryError(errno.ENOTDIR, f"{folder} {where}, not a folder")
            break
    return folder


def check_writable_folder(folder: str | os.PathLike, *, create: bool = True) -> Path:
    """Creates ``folder`` if needed and proves a file can be created in it.

    With ``create=False`` nothing is left behind: a missing folder is not created, and the
    nearest folder above it that exists is the one proved writable (where it would be made).

    Raises:
      OSError: the folder cannot be created, or nothing can be written into it; the message
        names ``folder`` and why (see also :func:`check_folder_path`).
    """
    folder = check_folder_path(folder)
    probe_in = folder if create else next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write(probe_in / ".karras_jax_write_probe", lambda f: f.write(b""))
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise OSError(err.errno, f"cannot write in the folder {folder}: {reason}") from None
    _remove(probe_in / ".karras_jax_write_probe")
    return folder


def _mode_for(target: Path) -> int:
    """The permission bits the new file gets: the old file's, else what ``open`` would give."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Read, not set: os.umask(0) would open a window in which other threads create files 0o666.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _remove(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
