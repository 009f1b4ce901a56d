"""Two small real scans shipped with medden (licences in README.md beside them)."""
from __future__ import annotations

from pathlib import Path

from medden.errors import ParameterError

SAMPLES = {"mr": "mr_ixi002_t2_head.nii.gz", "ct": "ct_totalseg_upper_abdomen.nii.gz"}


def sample_path(name: str) -> Path:
    """Path of the shipped sample ``'mr'`` (IXI T2 head) or ``'ct'`` (TotalSegmentator upper abdomen)."""
    try:
        return Path(__file__).with_name(SAMPLES[name])
    except KeyError:
        raise ParameterError(f"unknown sample {name!r} (known: {', '.join(SAMPLES)})") from None
