"""GPU timings of the deep models and the diffusion sampler, with BM4D timed on the same machine's CPU in the same run.

    python benchmarks/bench_gpu.py                     # on a machine with a CUDA GPU (about 3 minutes on one H100)

What it times (each GPU figure after a warm-up call, so the model is loaded and the kernels chosen; the first, cold
call is reported too):
* ``deep-ct`` on a 512×512×300 CT (a water-body phantom with 30 HU noise), target ≤ 3 s on one GPU;
* ``deep-mr`` on a 256³ MR volume;
* ``diffusion``: 8 posterior samples of a 256³ MR volume (Rician noise at 3 % of the maximum: every step of the
  default schedule runs), target ≤ 60 s on one GPU;
* the reference: ``bm4d`` and ``deep-mr`` on the same 64³ crop on this machine's CPU (all its cores), so the GPU's
  voxels per second can be set against BM4D's measured here.

Results: ``benchmarks/results/gpu.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn) -> tuple[object, float]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def ct_body(shape=(512, 512, 300), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.full(shape, -1000, np.float32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    body = ((yy - shape[0] / 2) / (0.39 * shape[0])) ** 2 + ((xx - shape[1] / 2) / (0.31 * shape[1])) ** 2 < 1
    x[body] = 40
    return x + rng.normal(0, 30, shape).astype(np.float32)


def mr_head(n: int = 256, level: float = 0.03, seed: int = 0) -> tuple[np.ndarray, float]:
    from medden.noise import rician
    from medden.phantoms import shepp_logan_3d

    clean = shepp_logan_3d((n, n, n)).data.astype(np.float32)
    clean = 1000 * clean / clean.max()
    sigma = level * 1000
    return np.asarray(rician(clean, sigma=sigma, generator=seed), np.float32), sigma


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--skip-bm4d", action="store_true")
    ap.add_argument("--prior", action="append", default=[], help="diffusion prior weights to time (repeatable; "
                                                                  "default: the shipped prior)")
    args = ap.parse_args(argv)
    import torch

    from medden.denoisers.deep import run_model
    from medden.denoisers.diffusion import posterior
    from medden.models import shipped_path

    if not torch.cuda.is_available():
        print("error: no CUDA GPU on this machine", file=sys.stderr)
        return 2
    res: dict = {"command": "python benchmarks/bench_gpu.py " + " ".join(argv or sys.argv[1:]),
                 "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "cpu": f"{os.cpu_count()} cores, {platform.machine()}"}

    ct = ct_body()
    _, cold = _timed(lambda: run_model(ct[:64, :64, :64], 30.0, shipped_path("deep-ct"), device="cuda"))
    torch.cuda.reset_peak_memory_stats()
    _, sec = _timed(lambda: run_model(ct, 30.0, shipped_path("deep-ct"), device="cuda"))
    res["deep_ct_512x512x300"] = {"seconds": sec, "voxels_per_s": ct.size / sec, "cold_first_call_64cubed_s": cold,
                                  "peak_gpu_bytes": torch.cuda.max_memory_allocated()}
    print(f"deep-ct 512×512×300 on GPU: {sec:.2f} s (first call on 64³, loading: {cold:.2f} s)", flush=True)
    del ct

    mr, sigma = mr_head(256)
    run_model(mr[:64, :64, :64], sigma, shipped_path("deep-mr"), device="cuda")
    _, sec = _timed(lambda: run_model(mr, sigma, shipped_path("deep-mr"), device="cuda"))
    res["deep_mr_256cubed"] = {"seconds": sec, "voxels_per_s": mr.size / sec}
    print(f"deep-mr 256³ on GPU: {sec:.2f} s", flush=True)

    for w in args.prior or [""]:
        key = "diffusion_256cubed" + (f" ({Path(w).stem})" if w else "")
        posterior(mr[:, :, :8], sigma, samples=1, steps=2, device="cuda", likelihood="rician", weights=w)  # warm up
        torch.cuda.reset_peak_memory_stats()
        (mean, std), sec = _timed(lambda: posterior(mr, sigma, samples=args.samples, device="cuda", seed=0,
                                                    likelihood="rician", weights=w))
        res[key] = {"samples": args.samples, "seconds": sec, "voxels_per_s": mr.size / sec,
                    "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "std_mean": float(std.mean())}
        print(f"{key} × {args.samples} samples on GPU: {sec:.1f} s", flush=True)

    crop = np.ascontiguousarray(mr[96:160, 96:160, 96:160])
    torch.set_num_threads(os.cpu_count() or 1)
    _, sec = _timed(lambda: run_model(crop, sigma, shipped_path("deep-mr"), device="cpu"))
    ref = {"deep_mr_cpu_64cubed_s": sec, "cpu_threads": torch.get_num_threads()}
    if not args.skip_bm4d:
        import medden

        vol = medden.Volume(crop, np.eye(4), modality="MR")
        _, sec = _timed(lambda: medden.denoise(vol, method="bm4d", sigma=sigma))
        ref["bm4d_cpu_64cubed_s"] = sec
        ref["bm4d_voxels_per_s"] = crop.size / sec
        for k in [k for k in res if k.startswith(("deep_", "diffusion_"))]:
            res[k]["times_bm4d_voxels_per_s"] = res[k]["voxels_per_s"] / ref["bm4d_voxels_per_s"]
        print(f"bm4d 64³ on this machine's CPU: {sec:.1f} s; deep-mr on the CPU: {ref['deep_mr_cpu_64cubed_s']:.2f} s",
              flush=True)
    res["reference_cpu"] = ref
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
