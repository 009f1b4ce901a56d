"""Outputs get the permissions a plain write would under the user's umask (not mkstemp's 0600 / mkdtemp's 0700)."""
import os
import stat

import numpy as np
import pytest

from medden import Volume, save_volume
from medden.io.atomic import atomic_path


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_sidecars_and_folders_follow_the_umask(tmp_path, ct_values, umask):
    vol = Volume(ct_values, np.diag([0.8, 0.8, 2.0, 1.0]), modality="CT")
    nii = save_volume(vol, tmp_path / "out.nii.gz", provenance={"method": "test"})
    nrrd = save_volume(vol, tmp_path / "out.nrrd")
    dcm = save_volume(vol, tmp_path / "dcm")
    with atomic_path(tmp_path / "manifest.json") as tmp:  # what the pipeline writes its manifest through
        tmp.write_text("{}")
    files = [nii, nii.with_name("out.json"), nrrd, tmp_path / "manifest.json", *sorted(dcm.iterdir())]
    for f in files:
        assert mode(f) == 0o666 & ~umask, f"{f.name}: {oct(mode(f))}"
    assert mode(dcm) == 0o777 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_exported_model_weights_have_normal_permissions(tmp_path):
    """A trained model's weights (safetensors writes 0600) and card get the mode any file the user writes has."""
    import os

    from medden.models import build_network
    from medden.models.card import ModelCard, MR_NORMALISATION, save_model

    net = build_network("conditioned-dncnn3d", depth=3, width=4)
    card = ModelCard(name="tiny", architecture=net.architecture, config=net.config, modality="MR",
                     normalisation=MR_NORMALISATION)
    old = os.umask(0o022)
    try:
        path = save_model(net, card, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert oct(path.with_suffix(".json").stat().st_mode & 0o777) == oct(0o644)
