"""Datalists resolve against a local folder and say clearly what is missing or wrong."""
import json
from pathlib import Path

import pytest

from medden.data import load_datalist, sha256_file
from medden.errors import InputError
from medden.samples import sample_path

MANIFESTS = Path(__file__).parents[1] / "data_manifests"


def test_samples_datalist_verifies_the_shipped_files():
    dl = load_datalist(MANIFESTS / "medden_samples.json", sample_path("mr").parent)
    assert dl.ok and not dl.unverified
    assert len(dl.splits["testing"]) == 2


def test_missing_and_mismatched_files_are_reported(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"abc")
    (tmp_path / "b.nii.gz").write_bytes(b"xyz")
    spec = {"name": "t", "splits": {"training": [
        {"image": "a.nii.gz", "sha256": sha256_file(tmp_path / "a.nii.gz")},
        {"image": "b.nii.gz", "sha256": "0" * 64},
        {"image": "c.nii.gz"}, {"glob": "sub/*.nii.gz"}]}}
    (tmp_path / "dl.json").write_text(json.dumps(spec))
    dl = load_datalist(tmp_path / "dl.json", tmp_path)
    assert [Path(e["image"]).name for e in dl.splits["training"]] == ["a.nii.gz"]
    assert dl.mismatched == ["b.nii.gz"] and dl.missing == ["c.nii.gz", "sub/*.nii.gz"]
    assert "2 missing" in dl.summary() and "wrong checksum" in dl.summary()
    with pytest.raises(InputError, match="missing"):
        load_datalist(tmp_path / "dl.json", tmp_path, strict=True)


@pytest.mark.parametrize("name", sorted(p.name for p in MANIFESTS.glob("*.json")))
def test_every_shipped_manifest_is_well_formed(name, tmp_path):
    spec = json.loads((MANIFESTS / name).read_text())
    for key in ("name", "description", "how_to_obtain", "licence", "splits"):
        assert spec.get(key), (name, key)
    dl = load_datalist(MANIFESTS / name, tmp_path)  # an empty folder: everything missing, nothing crashes
    assert not dl.ok and dl.missing


def test_bad_datalist_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_datalist(tmp_path / "x.json", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_datalist(tmp_path / "nope.json", tmp_path)
