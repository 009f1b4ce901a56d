"""The node's pieces that need no network: instance checks, and the on-disk queue across a restart."""
from __future__ import annotations

import os
import time

import numpy as np
import pydicom
import pytest

from dicom_factory import write_series
from medden.serve.node import image_problem
from medden.serve.spool import Spool, is_uid


@pytest.fixture
def instance(tmp_path):
    path = write_series(tmp_path / "s", np.zeros((8, 6, 2), np.float32), np.eye(4))[0]
    return pydicom.dcmread(path)


def test_a_good_image_passes(instance):
    assert image_problem(instance) is None


@pytest.mark.parametrize("change, reason", [
    (lambda ds: delattr(ds, "PixelData"), "without PixelData"),
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[:10]), "PixelData holds 10 bytes"),
    (lambda ds: delattr(ds, "ImagePositionPatient"), "without ImagePositionPatient"),
    (lambda ds: setattr(ds, "SeriesInstanceUID", "../../etc"), "invalid SeriesInstanceUID"),
    (lambda ds: delattr(ds, "Rows"), "without Rows"),
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unusable_images_say_why(instance, change, reason):
    change(instance)
    assert reason in image_problem(instance)


def test_uid_check():
    assert is_uid("1.2.840.10008.5.1.4.1.1.2")
    assert not is_uid("") and not is_uid("1..2") and not is_uid("1.2/3") and not is_uid("1." + "2" * 70)


def test_queue_survives_a_restart(tmp_path):
    spool = Spool(tmp_path / "q")
    spool.add("1.2.3", "1.2.3.1", b"first")
    spool.add("1.2.3", "1.2.3.2", b"second")
    assert spool.promote(quiet_s=60) == [] and spool.receiving() == 1
    # a killed node leaves a half-written instance, a half-written derived series and a job with no source
    (tmp_path / "q/incoming/1.2.3/.1.2.3.3.partial").write_bytes(b"half")
    (tmp_path / "q/jobs/5_9.9").mkdir()
    old = time.time() - 120
    for f in (tmp_path / "q/incoming/1.2.3").glob("*.dcm"):
        os.utime(f, (old, old))
    restarted = Spool(tmp_path / "q")
    assert not (tmp_path / "q/incoming/1.2.3/.1.2.3.3.partial").exists()
    assert not (tmp_path / "q/jobs/5_9.9").exists()
    jobs = restarted.promote(quiet_s=60)  # quiet since before the restart: complete at once
    assert [j.series_uid for j in jobs] == ["1.2.3"]
    assert sorted(p.name for p in jobs[0].source.iterdir()) == ["1.2.3.1.dcm", "1.2.3.2.dcm"]
    (jobs[0].folder / "derived-new").mkdir()
    again = Spool(tmp_path / "q")
    assert [j.name for j in again.pending_jobs()] == [jobs[0].name]
    assert not (jobs[0].folder / "derived-new").exists()  # redone from the source after a restart
    failed = again.fail(again.pending_jobs()[0], "boom")
    assert (failed / "error.json").is_file() and again.pending_jobs() == []
