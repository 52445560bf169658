"""The files torchfit writes: checking where they will go before a run, and replacing them atomically.

Owns two things every writer shares. ``check_writable`` is the check a callback
runs in ``set_params`` (and ``save_checkpoint`` before it builds anything): the
path is not a directory, its nearest existing parent is a directory, and a file
can really be created there; nothing is created on disk by the check.
``replace_atomically`` writes a whole file to a temporary file beside the
target, fsyncs it and renames it over the target, so a crash (even SIGKILL)
mid-write leaves the previous file whole. What goes into a file belongs to its
writer (``checkpoint``, ``callbacks.loggers``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def check_writable(owner: str, path: PathLike, directory: bool = False) -> None:
    """Raise if ``owner`` could not write ``path`` (a file, or a directory with ``directory=True``).

    >>> check_writable("ModelCheckpoint", "ckpt/best.pt")  # a directory to be created: fine

    The error names ``owner``, the path and what blocks it (``NotADirectoryError``
    for a parent that is a file, ``IsADirectoryError`` for a file path that is a
    directory, ``PermissionError`` where no file can be created).
    """
    path = os.path.abspath(os.fspath(path))
    if directory:
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(
                f"{owner}: {path!r} should be a directory but is a file. Pass a directory path, or move the file"
            )
    elif os.path.isdir(path):
        raise IsADirectoryError(
            f"{owner}: {path!r} is a directory, not a file it can write. Name a file inside it, e.g. "
            f"{os.path.join(path, 'file')!r}"
        )
    # The nearest part of the path that exists decides: a file there blocks every directory below it.
    parent = path if directory else os.path.dirname(path)
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        raise NotADirectoryError(
            f"{owner}: cannot write {path!r}: {parent!r} is a file, not a directory. Choose another path, or move "
            "the file"
        )
    try:  # os.access is wrong for root, ACLs and read-only mounts: creating a file is the real test
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".torchfit-probe-")
    except OSError as exc:
        raise PermissionError(
            f"{owner}: cannot write {path!r}: no file can be created in {parent!r} ({type(exc).__name__}: "
            f"{exc.strerror or exc}). Choose a writable directory"
        ) from exc
    os.close(fd)
    os.remove(probe)


@contextlib.contextmanager
def replace_atomically(path: PathLike, mode: str = "wb", **open_kwargs: object) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit fsync it and rename it over ``path``.

    >>> # with replace_atomically("logs/history.csv", "w", newline="") as f:
    >>> #     f.write("epoch,loss\\n")

    An exception (or Ctrl-C) inside the block removes the temporary file and
    leaves ``path`` as it was; a SIGKILL leaves at worst a ``.<name>.tmp-<pid>``
    file beside an intact ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **open_kwargs) as f:  # type: ignore[call-overload]
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
