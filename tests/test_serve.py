"""``medden serve`` against a real Orthanc: Orthanc C-STOREs a series to the node, the node denoises it and stores
the derived series back into Orthanc. Skipped only when Orthanc is not installed."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_factory import write_series
from orthanc_server import ORTHANC, Orthanc, kill
from medden.serve import DicomNode, NodeConfig
from medden.serve.forward import Destination
from medden.serve.log import EventLog

pytestmark = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt install orthanc)")

AFFINE = np.array([[0.8, 0, 0, -12.0], [0, 0.7, 0, -15.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    kill(server)  # its storage is temporary: no need for Orthanc's slower clean shutdown


def make_series(folder: Path, seed: int, study_uid: str | None = None, n: int = 8, series_number: int = 3):
    rng = np.random.default_rng(seed)
    values = (40.0 + rng.normal(0, 25, (32, 32, n))).astype(np.float32)
    values[:4] = -1000.0 + rng.normal(0, 25, (4, 32, n))
    paths = write_series(folder, values, AFFINE, study_uid=study_uid or pydicom.uid.generate_uid())
    for path in paths:  # the factory leaves SeriesNumber out; a PACS series has one
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = series_number
        ds.save_as(path, enforce_file_format=True)
    return paths


def upload(orthanc: Orthanc, paths) -> tuple[list[str], str, str]:
    """Upload files; returns (Orthanc instance IDs, Orthanc series ID, StudyInstanceUID)."""
    answers = [orthanc.upload(p) for p in paths]
    return [a["ID"] for a in answers], answers[0]["ParentSeries"], str(pydicom.dcmread(paths[0]).StudyInstanceUID)


def start_node(tmp_path: Path, orthanc: Orthanc, name: str, quiet_s: float = 1.0, spool: Path | None = None):
    stream = io.StringIO()
    config = NodeConfig(forward=Destination("127.0.0.1", orthanc.dicom_port, orthanc.aet),
                        spool=spool or tmp_path / "spool", host="127.0.0.1", port=0, method="gaussian",
                        quiet_s=quiet_s, retry_s=0.3, retry_max_s=2.0, once=True)
    node = DicomNode(config, log=EventLog(stream)).start()
    orthanc.add_modality(name, "MEDDEN", node.port)
    return node, stream


def events(stream: io.StringIO, kind: str | None = None) -> list[dict]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in found if kind is None or e["event"] == kind]


def tags(orthanc: Orthanc, series_id: str) -> list[dict]:
    return [orthanc.get(f"/instances/{i['ID']}/simplified-tags") for i in orthanc.get(f"/series/{series_id}/instances")]


def geometry(instances: list[dict]) -> list[tuple]:
    return sorted((i["ImagePositionPatient"], i["ImageOrientationPatient"], i["PixelSpacing"]) for i in instances)


def test_orthanc_series_comes_back_denoised_in_the_same_study(tmp_path, orthanc):
    ids, series_id, study_uid = upload(orthanc, make_series(tmp_path / "src", seed=1))
    before = {i: orthanc.request_bytes(f"/instances/{i}/attachments/dicom/md5") for i in ids}
    node, log = start_node(tmp_path, orthanc, "node1")
    try:
        orthanc.request("POST", "/modalities/node1/echo", {})  # Orthanc's C-ECHO: an HTTP error if it fails
        orthanc.store("node1", [series_id])
        assert node.wait(60), "the node did not finish"
    finally:
        node.stop()
    series = orthanc.series_of_study(study_uid)
    assert len(series) == 2
    derived = next(s for s in series if s["ID"] != series_id)
    source_tags, derived_tags = tags(orthanc, series_id), tags(orthanc, derived["ID"])
    assert len(derived_tags) == len(source_tags) == 8
    assert geometry(derived_tags) == geometry(source_tags)
    assert {t["StudyInstanceUID"] for t in derived_tags} == {study_uid}
    assert all(t["ImageType"].startswith("DERIVED\\SECONDARY") for t in derived_tags)
    assert {t["SeriesNumber"] for t in derived_tags} != {t["SeriesNumber"] for t in source_tags}
    assert not {t["SOPInstanceUID"] for t in derived_tags} & {t["SOPInstanceUID"] for t in source_tags}
    referenced = {t["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] for t in derived_tags}
    assert referenced == {t["SOPInstanceUID"] for t in source_tags}
    # the source series is untouched: same instances, same bytes
    assert {i["ID"] for i in orthanc.get(f"/series/{series_id}/instances")} == set(ids)
    assert {i: orthanc.request_bytes(f"/instances/{i}/attachments/dicom/md5") for i in ids} == before
    # the derived pixels are smoother than the source's
    src = pydicom.dcmread(io.BytesIO(orthanc_file(orthanc, series_id)))
    out = pydicom.dcmread(io.BytesIO(orthanc_file(orthanc, derived["ID"], like=src)))
    assert out.pixel_array[:, 6:].std() < 0.9 * src.pixel_array[:, 6:].std()  # water: columns 4 and up
    assoc = events(log, "association")
    assert len(assoc) == 2  # Orthanc's C-ECHO and its C-STORE association
    stored = [a for a in assoc if a["received"]]
    assert stored == [dict(stored[0], received=8, refused=0, outcome="EVT_RELEASED")]
    done = [e for e in events(log, "series") if e["status"] == "forwarded"]
    assert len(done) == 1 and done[0]["instances"] == 8 and done[0]["method"] == "gaussian"
    assert not any((tmp_path / "spool" / "jobs").iterdir())


def orthanc_file(orthanc: Orthanc, series_id: str, like=None) -> bytes:
    """The file of the series' instance at the position of ``like`` (or the first instance)."""
    for inst in orthanc.get(f"/series/{series_id}/instances"):
        data = orthanc.request_bytes(f"/instances/{inst['ID']}/file")
        if like is None:
            return data
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        if [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in like.ImagePositionPatient]:
            return data
    raise AssertionError("no instance at that position")


def test_destination_down_then_up_loses_nothing(tmp_path, orthanc):
    ids, series_id, study_uid = upload(orthanc, make_series(tmp_path / "src", seed=2))
    node, log = start_node(tmp_path, orthanc, "node2")
    try:
        orthanc.store("node2", [series_id])
        kill(orthanc)  # the destination goes down before the series is complete
        deadline = time.time() + 30
        while not [e for e in events(log, "series") if e["status"] == "retry"] and time.time() < deadline:
            time.sleep(0.1)
        orthanc.start()
        assert node.wait(60)
    finally:
        node.stop()
    retries = [e for e in events(log, "series") if e["status"] == "retry"]
    assert retries and "association failed" in retries[0]["error"]
    done = [e for e in events(log, "series") if e["status"] == "forwarded"]
    assert len(done) == 1 and done[0]["attempts"] == len(retries) + 1
    series = orthanc.series_of_study(study_uid)
    assert len(series) == 2
    derived = next(s for s in series if s["ID"] != series_id)
    assert len(derived["Instances"]) == 8


def _serve_forever(config: NodeConfig) -> None:  # runs in a forked child that the test kills
    DicomNode(config, log=EventLog(open(os.devnull, "w"))).start()
    while True:
        time.sleep(1)


def test_killed_node_finishes_its_queue_after_restart(tmp_path, orthanc):
    ids, series_id, study_uid = upload(orthanc, make_series(tmp_path / "src", seed=3))
    spool = tmp_path / "spool"
    from orthanc_server import free_port

    port = free_port()
    config = NodeConfig(forward=Destination("127.0.0.1", orthanc.dicom_port, orthanc.aet), spool=spool,
                        host="127.0.0.1", port=port, method="gaussian", quiet_s=60.0)
    child = multiprocessing.get_context("fork").Process(target=_serve_forever, args=(config,), daemon=True)
    child.start()
    try:
        orthanc.add_modality("node3", "MEDDEN", port)
        deadline = time.time() + 30
        while time.time() < deadline:  # until the child listens
            try:
                orthanc.request("POST", "/modalities/node3/echo", {})
                break
            except Exception:
                time.sleep(0.2)
        orthanc.store("node3", [series_id])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert len(list((spool / "incoming").glob("*/*.dcm"))) == 8  # received, never processed
    assert len(orthanc.series_of_study(study_uid)) == 1
    node, log = start_node(tmp_path, orthanc, "node3b", spool=spool)
    try:
        assert node.wait(60)
    finally:
        node.stop()
    assert events(log, "node")[0]["queued_series"] == 1
    series = orthanc.series_of_study(study_uid)
    assert len(series) == 2
    assert sorted(len(s["Instances"]) for s in series) == [8, 8]
    assert not any((spool / "incoming").iterdir()) and not any((spool / "jobs").iterdir())


def test_two_series_interleaved_in_one_association(tmp_path, orthanc, capsys):
    """Through the ``medden serve --once`` command itself: it exits on its own once both series are forwarded."""
    import threading

    from medden.cli import main
    from orthanc_server import free_port

    study_uid = pydicom.uid.generate_uid()
    a_ids, a_series, _ = upload(orthanc, make_series(tmp_path / "a", seed=4, study_uid=study_uid, series_number=5))
    b_ids, b_series, _ = upload(orthanc, make_series(tmp_path / "b", seed=5, study_uid=study_uid, series_number=6))
    port = free_port()
    exit_code = []
    command = threading.Thread(target=lambda: exit_code.append(main([
        "serve", "--forward", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.aet}", "--host", "127.0.0.1",
        "--port", str(port), "--spool", str(tmp_path / "spool"), "--method", "gaussian", "--quiet-time", "1",
        "--once"])))
    command.start()
    orthanc.add_modality("node4", "MEDDEN", port)
    deadline = time.time() + 30
    while time.time() < deadline:  # until the node listens
        try:
            orthanc.request("POST", "/modalities/node4/echo", {})
            break
        except Exception:
            time.sleep(0.1)
    orthanc.store("node4", [x for pair in zip(a_ids, b_ids) for x in pair])
    command.join(60)
    assert not command.is_alive() and exit_code == [0]
    log = io.StringIO(capsys.readouterr().err)
    stored = [a for a in events(log, "association") if a["received"]]
    assert len(stored) == 1 and stored[0]["received"] == 16 and len(stored[0]["series"]) == 2
    assert len([e for e in events(log, "series") if e["status"] == "forwarded"]) == 2
    series = orthanc.series_of_study(study_uid)
    assert len(series) == 4
    numbers = sorted(int(orthanc.get(f"/series/{s['ID']}")["MainDicomTags"]["SeriesNumber"]) for s in series)
    assert len(set(numbers)) == 4 and numbers[:2] == [5, 6]


def test_corrupt_and_non_image_instances_are_refused_and_the_rest_goes_through(tmp_path, orthanc):
    from pynetdicom import AE
    from pydicom.uid import ExplicitVRLittleEndian

    paths = make_series(tmp_path / "src", seed=6)
    study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    corrupt = pydicom.dcmread(paths[0])  # same series, a new instance whose pixel data is cut short
    corrupt.SOPInstanceUID = corrupt.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    corrupt.PixelData = corrupt.PixelData[:100]
    corrupt_path = tmp_path / "corrupt.dcm"
    corrupt.save_as(corrupt_path, enforce_file_format=True)
    report = pydicom.Dataset()  # a non-image instance in the same study
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.StudyInstanceUID, report.SeriesInstanceUID = study_uid, pydicom.uid.generate_uid()
    report.PatientID, report.Modality = "MEDDEN-TEST-001", "SR"
    report_path = tmp_path / "report.dcm"
    report.save_as(report_path, enforce_file_format=True)
    ids, series_id, _ = upload(orthanc, paths)
    bad = [orthanc.upload(corrupt_path)["ID"], orthanc.upload(report_path)["ID"]]
    # a valid image that is a whole series on its own: accepted, but no 3D volume → that series fails, logged
    lone = make_series(tmp_path / "lone", seed=8, study_uid=study_uid, n=1)
    lone_id = orthanc.upload(lone[0])["ID"]
    node, log = start_node(tmp_path, orthanc, "node5")
    try:
        orthanc.store("node5", ids[:4] + bad + [lone_id] + ids[4:])
        # the same refusals seen by a plain SCU: the exact DIMSE statuses, and the node keeps answering
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(pydicom.uid.CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(pydicom.uid.BasicTextSRStorage, ExplicitVRLittleEndian)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDDEN")
        assert assoc.is_established
        assert assoc.send_c_store(corrupt_path).Status == 0xA900
        assert assoc.send_c_store(report_path).Status == 0x0122
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert node.wait(60)
    finally:
        node.stop()
    refused = events(log, "refused")
    assert sorted(e["status"] for e in refused) == ["0x0122", "0x0122", "0xA900", "0xA900"]
    from_orthanc = [a for a in events(log, "association") if a["received"]]
    assert len(from_orthanc) == 1 and from_orthanc[0]["received"] == 9 and from_orthanc[0]["refused"] == 2
    done = [e for e in events(log, "series") if e["status"] == "forwarded"]
    assert len(done) == 1 and done[0]["instances"] == 8
    failed = [e for e in events(log, "series") if e["status"] == "failed"]
    assert len(failed) == 1 and "single 2D" in failed[0]["error"]
    assert node.failed_series == 1 and len(list((tmp_path / "spool" / "failed").glob("*/error.json"))) == 1
    series = orthanc.series_of_study(study_uid)
    others = {series_id, orthanc.get(f"/instances/{bad[1]}")["ParentSeries"],
              orthanc.get(f"/instances/{lone_id}")["ParentSeries"]}
    derived = [s for s in series if s["ID"] not in others]
    assert len(derived) == 1 and len(derived[0]["Instances"]) == 8


def test_readme_orthanc_lua_routing_sends_stable_series_and_not_the_derived_ones(tmp_path):
    """The README's routing example (medden/serve/orthanc_example/): Orthanc sends each stable CT/MR series to the node by
    itself, and does not send the derived series back."""
    lua = Path(__file__).parents[1] / "medden" / "serve" / "orthanc_example" / "route-to-medden.lua"
    server = Orthanc(tmp_path / "routing", StableAge=1, LuaScripts=[str(lua)]).start()
    try:
        node, log = start_node(tmp_path, server, "medden")  # the modality name the script sends to
        try:
            ids, series_id, study_uid = upload(server, make_series(tmp_path / "src", seed=7))
            assert node.wait(30)
            time.sleep(2.5)  # the derived series becomes stable too: it must not be sent to the node again
        finally:
            node.stop()
        assert len(server.series_of_study(study_uid)) == 2
        assert len([e for e in events(log, "series") if e["status"] == "forwarded"]) == 1
        assert [a["received"] for a in events(log, "association")] == [8]
    finally:
        kill(server)
    assert (tmp_path / "routing" / "orthanc.log").read_text().count("medden: sending series") == 1
