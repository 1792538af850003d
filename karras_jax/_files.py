"""Atomic file writes: a file is either its old self or completely the new one.

Everything karras_jax writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the target's folder, which is flushed, fsynced and renamed over the target
(``os.replace`` is atomic on POSIX and Windows within one file system). A failed write (disk
full, file-size limit, permission, read-only folder, Ctrl-C) leaves the previous file
untouched and no temporary file behind, and raises ``OSError`` naming the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "check_writable_folder"]


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
    target = Path(path)
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {target}: {err.strerror or err}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except OSError as err:
        _remove(temp)
        raise OSError(err.errno, f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:  # KeyboardInterrupt too: never leave a temporary file behind
        _remove(temp)
        raise
    return target


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Creates ``folder`` if needed and proves a file can be created in it.

    Raises:
      OSError: the folder cannot be created, or nothing can be written into it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / ".karras_jax_write_probe", lambda f: f.write(b""))
    _remove(folder / ".karras_jax_write_probe")
    return folder


def _umask() -> int:
    # os.umask can only be read by setting it; mkstemp's 0o600 would otherwise stick.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
