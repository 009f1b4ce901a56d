"""Training under torchrun with DistributedDataParallel: two CPU processes with the gloo backend."""
import json
import os
import subprocess
import sys

import pytest

from test_training import _cfg, scans  # noqa: F401 - the fixture


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, scans):  # noqa: F811
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(_cfg(tmp_path, scans, epochs=2, steps_per_epoch=3)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "medden", "train", str(cfg)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DistributedDataParallel over 2 processes (gloo)" in proc.stdout
    assert proc.stdout.count("trained 6 steps") == 1  # rank 0 alone reports
    digests = [next((tmp_path / "ckpt").glob(f"*/rank{r}.sha256")).read_text() for r in (0, 1)]
    assert digests[0] == digests[1]  # the ranks saw different patches yet hold identical weights: gradients were averaged
    assert (tmp_path / "out" / "m.safetensors").is_file()
