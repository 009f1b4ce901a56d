"""Datalists: MONAI-style JSON lists of the files of a dataset, with how to obtain it, its licence, splits and
checksums, resolved against a local folder.

A datalist is ``{"name", "description", "licence", "how_to_obtain", "reference", "splits": {"training": [...],
"validation": [...], "testing": [...]}}`` where each entry is ``{"image": "relative/path", "sha256": "…" | null,
...}``. (``"training"``, ``"validation"`` and ``"testing"`` also work as top-level keys, as in MONAI's
``load_decathlon_datalist``.) Entries with a ``glob`` instead of ``image`` stand for all files matching it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medden.conventions import sha256_file  # noqa: F401  (re-exported: medden.data.sha256_file)
from medden.errors import InputError

SPLITS = ("training", "validation", "testing")


@dataclass
class Datalist:
    """A datalist resolved against ``root``: absolute paths per split, and what is missing or does not match."""

    name: str
    root: Path
    info: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        found = sum(len(v) for v in self.splits.values())
        text = f"{self.name}: {found} file(s) found under {self.root}"
        if self.missing:
            text += f"; {len(self.missing)} missing (first: {self.missing[0]})"
        if self.mismatched:
            text += f"; {len(self.mismatched)} with a wrong checksum (first: {self.mismatched[0]})"
        if self.unverified:
            text += f"; {len(self.unverified)} not verified (no checksum recorded)"
        return text


def load_datalist(datalist: str | os.PathLike, root: str | os.PathLike, *, verify: bool = True,
                  strict: bool = False) -> Datalist:
    """Resolve a datalist JSON against the local folder ``root``.

    Parameters
    ----------
    datalist : path of the datalist JSON (see ``data_manifests/``).
    root : the folder where the user put the dataset.
    verify : compare sha256 checksums where the datalist records them.
    strict : raise :class:`InputError` naming the first missing or mismatched file instead of reporting it.

    Returns
    -------
    Datalist
        ``splits[name]`` holds the entries with ``image`` made absolute; ``missing``, ``mismatched`` and
        ``unverified`` list relative paths.
    """
    path, root = Path(datalist), Path(root)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"datalist {path} does not exist") from None
    except ValueError as exc:
        raise InputError(f"datalist {path} is not valid JSON: {exc}") from None
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    splits_spec = spec.get("splits") or {k: spec[k] for k in SPLITS if k in spec}
    if not splits_spec:
        raise InputError(f"datalist {path} has no splits (expected 'splits' or {', '.join(SPLITS)})")
    result = Datalist(name=spec.get("name", path.stem), root=root,
                      info={k: v for k, v in spec.items() if k not in ("splits", *SPLITS)})
    for split, entries in splits_spec.items():
        resolved = []
        for entry in entries:
            entry = {"image": entry} if isinstance(entry, str) else dict(entry)
            if "glob" in entry:
                matches = sorted(root.glob(entry["glob"]))
                if not matches:
                    result.missing.append(entry["glob"])
                resolved += [{**entry, "image": str(m)} for m in matches]
                continue
            rel = entry.get("image")
            if not rel:
                raise InputError(f"datalist {path}: an entry of split {split!r} has no 'image'")
            target = root / rel
            if not target.exists():
                result.missing.append(rel)
                continue
            expected = entry.get("sha256")
            if verify and expected and target.is_file():
                if sha256_file(target) != expected:
                    result.mismatched.append(rel)
                    continue
            elif verify and not expected:
                result.unverified.append(rel)
            resolved.append({**entry, "image": str(target)})
        result.splits[split] = resolved
    if strict and not result.ok:
        raise InputError(result.summary())
    return result
