"""Write-then-rename, so that an interrupted or failed write never leaves a partial output behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from medden.conventions import give_normal_permissions
from medden.errors import OutputError


def check_output_path(path: Path, *, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output that is an input, exists (unless ``overwrite``) or sits in a folder that cannot be written."""
    path = Path(path)
    resolved = path.resolve()
    for inp in inputs:
        inp = Path(inp).resolve()
        if resolved == inp or inp in resolved.parents or resolved in inp.parents:
            raise OutputError(f"output {path} would overwrite the input {inp}")
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} already exists (use --overwrite to replace it)")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; on success rename it to ``path``, on failure delete it.

    The temporary name keeps the final suffixes so writers that choose a format by extension still work.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) if not is_dir else ""
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        give_normal_permissions(tmp)
        if is_dir and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


