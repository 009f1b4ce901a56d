"""Speed as a user gets it: the whole ``medden denoise`` command on a 512×512×300 CT, where its time goes, and
BM4D's voxel rate on the same machine in the same run.

    python benchmarks/bench_speed_cli.py                 # prepare the CT, 3 timed runs, profile, BM4D crop
    python benchmarks/bench_speed_cli.py --runs 5 --method deep-ct
    python benchmarks/bench_speed_cli.py --time-log runs.txt   # use `/usr/bin/time -v` logs of runs made elsewhere
    python benchmarks/bench_speed_cli.py --param weights=cand.safetensors --name speed_cand   # another model

1. **Input** (``--prepare``, done when missing): a real chest CT (``ct/pyradiomics_lung1_chest.nii.gz`` under the
   data root: ``--data-root``, ``$MEDDEN_DATA``, else ``../shared/data``) resampled (linear) to 512×512×300 voxels,
   stored with 0.63 × 0.63 × 1 mm voxels (the anatomy is stretched ≈ 10 % in-plane, compressed in z: only the size
   and the HU content matter for speed), plus 20 HU Gaussian noise (seed 0), rounded to int16 as a scanner stores
   it, written to ``scratch/speed/ct_512x512x300.nii.gz`` (git-ignored).
2. **Whole command**, as a user types it: ``medden denoise ct.nii.gz --method deep-ct --quiet -o out.nii.gz``, run
   ``--runs`` times as a fresh process under ``/usr/bin/time -v``: wall seconds (median, min, max) and peak resident
   memory of the process (the largest of its runs).
3. **Where the time goes**: the first timed run runs the same CLI ``main`` inside ``cProfile`` (imports included),
   summed by stage — imports, load, noise estimation, network (sliding window), fidelity, write (``--no-profile``:
   plain runs only).
4. **BM4D** (measured first) on a central crop (``--bm4d-crop``, default 128×128×48) of the same CT, in this process,
   ``sigma="auto"`` as the command uses it; the same crop through the deep model's ``denoise`` for a like-for-like
   rate. Ratio: whole-command voxels per second of the deep model over BM4D's voxels per second (the target is ≥ 50×;
   BM4D's figure excludes loading and writing, so the ratio is conservative).

Results: ``benchmarks/results/speed.json``. Run niced and on an otherwise quiet machine where possible; state the
machine's load with the figures (recorded: the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS_DIR, data_root  # noqa: E402

SHAPE = (512, 512, 300)
SPACING = (0.63, 0.63, 1.0)
SOURCE = "ct/pyradiomics_lung1_chest.nii.gz"
SCRATCH = ROOT / "scratch" / "speed"

#: Profile stages: (label, module path fragment, function name); cumulative time of the outermost call of each.
STAGES = (("load", "medden/io/__init__.py", "load_volume"),
          ("noise estimation", "medden/noise/estimate.py", "estimate_noise"),
          ("model loading", "medden/models/card.py", "load_model"),
          ("network (sliding window)", "medden/inference.py", "sliding_window"),
          ("fidelity", "medden/denoisers/fidelity.py", "local_mean_fidelity"),
          ("write", "medden/io/__init__.py", "save_volume"))


def prepare(root: Path, path: Path, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> dict:
    """Write the 512×512×300 test CT (see the module docstring) unless it exists."""
    import medden
    from scipy import ndimage

    info = {"source": SOURCE, "shape": list(shape), "spacing_mm": list(SPACING), "added_noise_hu": 20.0,
            "seed": seed, "path": str(path.relative_to(ROOT))}
    if path.is_file():
        return info
    src = medden.load_volume(root / SOURCE)
    zoom = [t / s for t, s in zip(shape, src.shape)]
    data = ndimage.zoom(src.data.astype(np.float32), zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    data += np.random.default_rng(seed).normal(0, 20.0, data.shape).astype(np.float32)
    aff = np.diag(list(SPACING) + [1.0])
    aff[:3, 3] = src.affine[:3, 3]
    vol = medden.Volume(np.rint(data), aff, modality="CT", meta={"stored_dtype": "int16"})  # as a scanner stores it
    path.parent.mkdir(parents=True, exist_ok=True)
    medden.save_volume(vol, path, overwrite=True)
    return info


def command(ct: Path, out: Path, method: str, params: list[str] = ()) -> list[str]:
    exe = shutil.which("medden")
    head = [exe] if exe else [sys.executable, "-m", "medden"]
    extra = [a for p in params for a in ("--param", p)]
    return head + ["denoise", str(ct), "--method", method, *extra, "--quiet", "-o", str(out), "--overwrite"]


def parse_time_v(text: str) -> list[dict]:
    """Wall seconds and peak RSS (MB) of each ``/usr/bin/time -v`` report in ``text``."""
    runs = []
    for block in text.split("Command being timed:")[1:]:
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", block)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", block)
        user = re.search(r"User time \(seconds\): ([\d.]+)", block)
        sys_ = re.search(r"System time \(seconds\): ([\d.]+)", block)
        status = re.search(r"Exit status: (\d+)", block)
        if not wall:
            continue
        sec = 0.0
        for part in wall.group(1).split(":"):
            sec = sec * 60 + float(part)
        runs.append({"wall_s": sec, "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None,
                     "user_s": float(user.group(1)) if user else None, "sys_s": float(sys_.group(1)) if sys_ else None,
                     "exit_status": int(status.group(1)) if status else None})
    return runs


def timed_run(cmd: list[str], profile: bool) -> tuple[dict, dict | None]:
    """One run of ``cmd`` under ``/usr/bin/time -v``; with ``profile`` the same CLI ``main`` runs under cProfile (the
    stage breakdown; its wall time includes the profiler's small overhead and is marked ``profiled``)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "time.txt"
        stats = Path(tmp) / "prof.out"
        run = cmd if not profile else [sys.executable, "-c", PROFILE_SCRIPT, str(stats)] + cmd[cmd.index("denoise"):]
        res = subprocess.run(["/usr/bin/time", "-v", "-o", str(log)] + run, check=False, capture_output=True,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        found = parse_time_v(log.read_text())
        if not found:
            raise SystemExit(f"error: /usr/bin/time gave no report: {res.stderr.strip()[-300:]}")
        if profile:
            found[0]["profiled"] = True
        return found[0], (stages(res.stdout, res.stderr, stats) if profile else None)


PROFILE_SCRIPT = r"""
import cProfile, sys, time
t0 = time.perf_counter()
prof = cProfile.Profile()
prof.enable()
from medden.cli import main
t_import = time.perf_counter() - t0
code = main(sys.argv[2:])
prof.disable()
prof.dump_stats(sys.argv[1])
print(f"IMPORT {t_import:.3f} TOTAL {time.perf_counter() - t0:.3f} EXIT {code}")
"""


def stages(stdout: str, stderr: str, stats_path: Path) -> dict:
    """Seconds per stage of a profiled run: the cumulative time of each stage's function (:data:`STAGES`)."""
    m = re.search(r"IMPORT ([\d.]+) TOTAL ([\d.]+) EXIT (\d+)", stdout)
    if not m or not stats_path.is_file():
        return {"error": (stderr.strip().splitlines() or ["no output"])[-1]}
    st = pstats.Stats(str(stats_path))
    out = {"total_s": float(m.group(2)), "imports_s": float(m.group(1)), "exit_status": int(m.group(3))}
    for label, frag, fn in STAGES:
        cum = [v[3] for k, v in st.stats.items() if k[2] == fn and k[0].replace(os.sep, "/").endswith(frag)]
        out[label + "_s"] = max(cum) if cum else 0.0
    out["other_s"] = out["total_s"] - out["imports_s"] - sum(out[s[0] + "_s"] for s in STAGES)
    # every import, the lazy ones inside the stages too (overlaps them): what start-up costs in all
    imp = [v[3] for k, v in st.stats.items() if k[2] == "_find_and_load"]
    out["all_imports_s"] = max(imp) if imp else None
    top = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:8]  # by own (total) time
    out["top_own_time"] = [{"function": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "own_s": v[2]} for k, v in top]
    return out


def bm4d_rate(ct: Path, crop: tuple[int, int, int], method: str, params: dict | None = None) -> dict:
    import medden
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    vol = medden.load_volume(ct)
    sl = tuple(slice((n - c) // 2, (n - c) // 2 + c) for n, c in zip(vol.shape, crop))
    sub = medden.Volume(np.ascontiguousarray(vol.data[sl]), vol.affine, modality="CT")
    out = {"crop": list(crop), "voxels": int(sub.data.size)}
    for m in ("bm4d", method):
        kw = (params or {}) if m == method else {}
        if m == method:  # warm the model once: the whole-command timing pays its loading separately
            medden.denoise(sub, method=m, sigma="auto", device="cpu", **kw)
        t, c = time.perf_counter(), time.process_time()
        medden.denoise(sub, method=m, sigma="auto", device="cpu", **kw)
        sec, cpu = time.perf_counter() - t, time.process_time() - c
        out[m] = {"seconds": sec, "cpu_seconds": cpu, "voxels_per_s": sub.data.size / sec,
                  "voxels_per_cpu_s": sub.data.size / cpu}
        print(f"  {m} on {crop}: {sec:.1f} s ({cpu:.1f} CPU s), {sub.data.size / sec:,.0f} voxels/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="data folder (default: $MEDDEN_DATA, else ../shared/data)")
    ap.add_argument("--method", default="deep-ct")
    ap.add_argument("--runs", type=int, default=3, help="timed whole-command runs (0: none)")
    ap.add_argument("--time-log", default=None,
                    help="a file of `/usr/bin/time -v` reports of runs made elsewhere, parsed instead of --runs")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--bm4d-crop", default="128,128,48")
    ap.add_argument("--shape", default="512,512,300", help="test CT size in voxels (smaller for a smoke test)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a method parameter, as `medden denoise --param` takes it (e.g. weights=candidate.safetensors "
                         "to time another model); repeatable")
    ap.add_argument("--name", default="speed")
    args = ap.parse_args(argv)
    from medden.registry import parse_assignments

    params = parse_assignments(args.param, option="--param")
    load0 = os.getloadavg()
    shape = tuple(int(v) for v in args.shape.split(","))
    ct = SCRATCH / f"ct_{'x'.join(map(str, shape))}.nii.gz"
    print("preparing", ct.relative_to(ROOT), flush=True)
    info = prepare(data_root(args.data_root), ct, shape)
    out_path = SCRATCH / "out.nii.gz"
    cmd = command(ct, out_path, args.method, args.param)
    shown = (f"medden denoise {ct.relative_to(ROOT)} --method {args.method}"
             + "".join(f" --param {p}" for p in args.param) + f" --quiet -o {out_path.relative_to(ROOT)}")
    result: dict = {"command": shown, "input": info, "machine": {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "load_average_before": load0}}
    crop = tuple(int(v) for v in args.bm4d_crop.split(","))
    result["same_run_crop"] = bm4d_rate(ct, crop, args.method, params)  # first: short, so every partial result has it
    path = RESULTS_DIR / f"{args.name}.json"

    def summarise_and_write(runs: list[dict], note: str) -> None:
        result["runs_source"] = note
        bm = result["same_run_crop"]["bm4d"]
        result["ratio_crop_vs_bm4d"] = result["same_run_crop"][args.method]["voxels_per_s"] / bm["voxels_per_s"]
        if runs:
            walls = [r["wall_s"] for r in runs]
            cpus = [r["user_s"] + r["sys_s"] for r in runs if r["user_s"] is not None]
            vox = int(np.prod(shape))
            whole = {"runs": runs, "wall_median_s": statistics.median(walls), "wall_min_s": min(walls),
                     "wall_max_s": max(walls), "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in runs),
                     "voxels": vox, "voxels_per_s": vox / statistics.median(walls)}
            if cpus:  # CPU seconds depend far less on what else the machine runs than wall seconds do
                whole.update(cpu_median_s=statistics.median(cpus), voxels_per_cpu_s=vox / statistics.median(cpus))
                result["ratio_whole_command_vs_bm4d_cpu_time"] = whole["voxels_per_cpu_s"] / bm["voxels_per_cpu_s"]
            result["whole_command"] = whole
            result["ratio_whole_command_vs_bm4d"] = whole["voxels_per_s"] / bm["voxels_per_s"]
        result["machine"]["load_average_after"] = os.getloadavg()
        result["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(path)

    if args.time_log:
        runs = parse_time_v(Path(args.time_log).read_text())
        summarise_and_write(runs, f"/usr/bin/time -v reports of {len(runs)} runs made outside this script")
    else:
        runs = []
        for i in range(args.runs):  # written after each run: a stopped benchmark keeps the runs it finished
            profile = i == 0 and not args.no_profile
            run, breakdown = timed_run(cmd, profile)
            runs.append(run)
            if breakdown:
                result["breakdown"] = breakdown
            print(f"  run {i + 1}/{args.runs}: {run['wall_s']:.1f} s wall, {run['user_s'] + run['sys_s']:.1f} CPU s, "
                  f"peak {run['peak_rss_mb']:.0f} MB", flush=True)
            summarise_and_write(runs, f"{len(runs)} runs of the command under /usr/bin/time -v, one after another"
                                + ("; the first under cProfile (the breakdown)" if not args.no_profile else ""))
    if not runs:
        summarise_and_write([], "no whole-command runs")
    print(json.dumps({k: v for k, v in result.items() if k != "input"}, indent=1))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
