"""What the MONAI bundles in ``bundles/`` need besides medden's public API: where the bundle lies, its weights, and
the scans of the dataset folder.

The bundle configs call these from ``python -m monai.bundle run``, which turns a failing config expression into a
long traceback and, for an empty folder, would happily denoise nothing and exit 0. So these helpers stop the run
the way the ``medden`` command does: one ``error: ...`` line on stderr and exit status 1 (they raise
:class:`SystemExit` with that message).
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Sequence

#: Where the weights of a bundle lie, relative to its root (MONAI model-zoo layout).
WEIGHTS = Path("models") / "model.safetensors"


def _stop(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


def config_files(argv: Sequence[str] | None = None) -> list[str]:
    """The config files named by ``--config_file`` on a ``python -m monai.bundle`` command line (one path, or a
    list written as a Python literal, as MONAI accepts); empty when there is none."""
    args = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--config_file" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if value.lstrip().startswith(("[", "(")):
            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                return []
        return [value]
    return []


def bundle_root(argv: Sequence[str] | None = None, default: str = ".") -> str:
    """The bundle folder, found from the first config file given to ``python -m monai.bundle``.

    A bundle keeps its configs in ``<bundle_root>/configs/`` (MONAI's bundle specification; ``ConfigWorkflow``
    uses the same rule for the Python path), so the bundle root is that folder's parent, whatever the current folder
    is. ``--bundle_root DIR`` on the command line still overrides it, as in every model-zoo bundle. Without
    ``--config_file`` on the command line (a workflow built in Python), ``default``: the MONAI convention of running
    from inside the bundle.
    """
    files = config_files(argv)
    if not files:
        return default
    folder = Path(files[0]).resolve().parent
    return str(folder.parent if folder.name == "configs" else folder)


def weights_file(root: str | os.PathLike) -> str:
    """The bundle's weights, ``<root>/models/model.safetensors``; stops the run when they are not there (instead
    of letting another model be used silently)."""
    path = Path(root) / WEIGHTS
    if not path.is_file():
        raise _stop(f"no model weights at {path}: bundle_root {str(root)!r} is not a medden bundle folder "
                    "(give it with --bundle_root DIR)")
    return str(path)


def scan_paths(dataset_dir: str | os.PathLike, extensions: Sequence[str]) -> list[str]:
    """The scans directly inside ``dataset_dir``: files ending in one of ``extensions`` and sub-folders (one DICOM
    series each), sorted; hidden entries (``.*``, AppleDouble ``._*``) are left out.

    Stops the run when no folder is named, or it is missing, is not a folder or holds no scan.
    """
    if not str(dataset_dir).strip():
        raise _stop("no dataset folder given (give it with --dataset_dir DIR)")
    folder = Path(dataset_dir)
    if not folder.exists():
        raise _stop(f"dataset folder {folder} does not exist (give it with --dataset_dir DIR)")
    if not folder.is_dir():
        raise _stop(f"dataset_dir {folder} is not a folder (give a folder of scans with --dataset_dir DIR)")
    suffixes = tuple(e.lower() for e in extensions)
    found = sorted(str(p) for p in folder.iterdir() if not p.name.startswith(".")
                   and (p.is_dir() or p.name.lower().endswith(suffixes)))
    if not found:
        raise _stop(f"no scans in dataset folder {folder} (looked for {', '.join(extensions)} files and DICOM "
                    "series folders)")
    return found
