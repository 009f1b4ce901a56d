"""Seconds each registered denoiser takes on the shipped samples, side by side with BM4D in the same run.

Reproduce (2-core CPU, from the repository root, bm extra installed):

    python benchmarks/bench_speed_samples.py                 # MR sample, every available method
    python benchmarks/bench_speed_samples.py --sample ct --methods tv,nlm,bm4d --repeats 3

Prints a table (median seconds over repeats, voxels per second, speed relative to BM4D) and writes
``benchmarks/results/speed_<sample>.json``. The noise level is estimated once (``sigma='auto'``) and shared, so
every method does the same job.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import medden
from medden.denoisers import estimate_sigma
from medden.samples import sample_path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="mr", choices=("mr", "ct"))
    parser.add_argument("--methods", default="", help="comma-separated registry names (default: all available)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    vol = medden.load_volume(sample_path(args.sample))
    sigma = estimate_sigma(vol)
    names = [m for m in args.methods.split(",") if m] or [s.name for s in medden.list_methods() if s.available]
    if "bm4d" not in names:
        names.append("bm4d")  # the reference always runs in the same process
    rows = []
    for name in names:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            medden.denoise(vol, method=name, sigma=sigma, device="cpu")
            times.append(time.perf_counter() - start)
        rows.append({"method": name, "seconds_median": statistics.median(times), "seconds_all": times})
    ref = next(r for r in rows if r["method"] == "bm4d")["seconds_median"]
    voxels = vol.data.size
    print(f"sample {args.sample}: {vol.shape} ({voxels} voxels), sigma {sigma:.4g} (estimated), "
          f"{args.repeats} repeat(s), CPU, {platform.processor() or platform.machine()}")
    print(f"{'method':10s} {'seconds':>9s} {'Mvoxel/s':>9s} {'× BM4D speed':>13s}")
    for r in rows:
        r["voxels_per_second"] = voxels / r["seconds_median"]
        r["speed_vs_bm4d"] = ref / r["seconds_median"]
        print(f"{r['method']:10s} {r['seconds_median']:9.2f} {r['voxels_per_second'] / 1e6:9.3f} "
              f"{r['speed_vs_bm4d']:13.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"speed_{args.sample}.json"
    out.write_text(json.dumps({"sample": args.sample, "shape": vol.shape, "sigma": sigma, "rows": rows,
                               "cpu_count": __import__("os").cpu_count()}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
