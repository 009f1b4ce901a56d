"""Seconds to simulate 25 % dose CT on a 512×512×100 volume (CPU, and CUDA when available), plus a check of the
noise estimators on the real volumes in ../shared/data (noise added at 3 % and 10 %).

Reproduce (from the repository root)::

    python benchmarks/bench_simulate.py [--data-root DIR]           # writes benchmarks/results/simulate.json

The data folder is ``--data-root``, else ``$MEDDEN_DATA``, else ../shared/data beside the repository.
The volume is the first real CT in its ct/ cropped or tiled to 512×512×100 when present, else the water
cylinder phantom. CPU threads: torch's default (all cores of the machine).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import medden
from medden.noise import estimate_noise, gaussian, simulate, sigma_wavelet_mad
from medden.phantoms import water_cylinder
from medden.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import data_root  # noqa: E402

SHARED = data_root()  # replaced by --data-root in main()
SHAPE = (512, 512, 100)


def ct_volume() -> tuple[Volume, str]:
    files = sorted((SHARED / "ct").glob("*.nii.gz")) if (SHARED / "ct").is_dir() else []
    if not files:
        return water_cylinder(SHAPE, (0.8, 0.8, 2.0)).volume, "water-cylinder phantom"
    v = medden.load_volume(files[0])
    reps = [int(np.ceil(t / s)) for t, s in zip(SHAPE, v.shape)]
    data = np.tile(v.data, reps)[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return Volume(data, v.affine, modality="CT"), f"{files[0].name} tiled/cropped to {SHAPE}"


def time_simulate(volume: Volume, device: str) -> float:
    t0 = time.perf_counter()
    simulate(volume, "lowdose-ct", dose=0.25, seed=0, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def estimator_check() -> list[dict]:
    rows = []
    for path in sorted(SHARED.glob("ct/*.nii.gz")) + sorted(SHARED.glob("mri/*.nii.gz")):
        v = medden.load_volume(path)
        if v.shape[2] > 64:  # keep the check quick: the central 64 slices
            k0 = (v.shape[2] - 64) // 2
            v = Volume(v.data[:, :, k0:k0 + 64], v.affine, modality=v.modality)
        is_ct = "/ct/" in str(path)
        if is_ct:
            v = Volume(v.data, v.affine, modality="CT")
        ref = 1000.0 if is_ct else float(np.percentile(v.data[v.data > 0], 99.9))
        for fraction in (0.03, 0.10):
            add = fraction * ref
            noisy = v.with_data(gaussian(v.data, sigma=add, generator=0))
            if is_ct:
                before, after, method = estimate_noise(v).sigma, estimate_noise(noisy).sigma, "ct-local-std"
            else:
                head = v.data > 0
                before, after = sigma_wavelet_mad(v.data, mask=head), sigma_wavelet_mad(noisy.data, mask=head)
                method = "wavelet-mad-foreground"
            found = float(np.sqrt(max(after ** 2 - before ** 2, 0.0)))
            rows.append({"volume": path.name, "method": method, "added_fraction": fraction, "added_sigma": add,
                         "recovered_sigma": found, "ratio": found / add})
    return rows


def main() -> None:
    global SHARED
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None,
                    help="data folder (default: $MEDDEN_DATA, else ../shared/data beside the repository)")
    SHARED = data_root(ap.parse_args().data_root)
    volume, source = ct_volume()
    results = {"volume": source, "shape": list(volume.shape), "dose": 0.25, "machine": platform.processor() or
               platform.machine(), "cpu_threads": torch.get_num_threads(), "seconds": {}}
    results["seconds"]["cpu"] = time_simulate(volume, "cpu")
    if torch.cuda.is_available():
        time_simulate(volume, "cuda")  # warm-up
        results["seconds"]["cuda"] = time_simulate(volume, "cuda")
        results["gpu"] = torch.cuda.get_device_name()
    if SHARED.is_dir():
        results["estimators_on_shared_volumes"] = estimator_check()
    out = ROOT / "benchmarks" / "results" / "simulate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"lowdose-ct, 25 % dose, {source}")
    print(f"{'device':8} {'seconds':>8}")
    for dev, sec in results["seconds"].items():
        print(f"{dev:8} {sec:8.1f}")
    for row in results.get("estimators_on_shared_volumes", []):
        print(f"{row['volume']:45} {row['method']:24} +{row['added_fraction']:.0%}: recovered/added "
              f"{row['ratio']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
