"""Atomic file writes: a file is either the old one, whole, or the new one, whole.

Why: checkpoints, detections, metrics and proposal caches are read back later (by a resumed run,
by the evaluator, by another process). Written in place, a crash, a kill or a full disk half-way
through would leave a truncated file where the previous good one was, and the next reader fails
on it or, worse, reads a part of it. Here the bytes go to a temporary file beside the target, are
flushed and ``fsync``-ed to disk, and only then does ``os.replace`` swap the temporary file in
(atomic within one file system, hence "beside"). Whatever happens before that swap, the old file
is untouched and the temporary file is removed (on any exception, ``KeyboardInterrupt``
included); a process killed outright (SIGKILL, power loss) can leave only a ``.<name>.*.tmp``
file next to the target, never a damaged target.

The new file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the
umask), not ``mkstemp``'s private ``0o600``. Parent folders are created. After the swap the folder
is ``fsync``-ed too where the platform allows, so that the rename itself survives a power loss.

Use :func:`atomic_write` as a context manager for writers that take a file object
(``torch.save``, ``json.dump``, ``np.savez``), or :func:`atomic_write_bytes` /
:func:`atomic_write_text` for data already in memory::

    with atomic_write(path, "w") as f:
        json.dump(obj, f)
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]

_MODES = {"w": "w", "wt": "w", "wb": "wb"}


def _umask() -> int:
    """The process umask, read without changing it where possible (``os.umask`` is process-wide:
    setting it even briefly races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:  # Linux >= 4.7
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; silently skipped where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Context manager: a file object whose content replaces ``path`` atomically on a clean exit.

    Args:
        path: the file to write (replaced if it exists; parent folders are created).
        mode: ``"wb"`` (binary) or ``"w"`` / ``"wt"`` (text).
        encoding: text mode only; default UTF-8 (not the locale's).
        newline: text mode only, as for ``open``.

    Yields:
        the open temporary file. When the ``with`` block ends without an exception, the file is
        flushed, ``fsync``-ed, given normal permissions and renamed onto ``path``. When it raises
        (anything, ``KeyboardInterrupt`` included), the temporary file is deleted, ``path`` is left
        as it was, and the exception propagates.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write: mode must be 'wb', 'w' or 'wt', got {mode!r}")
    binary = _MODES[mode] == "wb"
    if binary and (encoding is not None or newline is not None):
        raise ValueError("atomic_write: encoding and newline are for text mode only")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0o600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns ``path`` as a ``Path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); returns ``path`` as a ``Path``."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
