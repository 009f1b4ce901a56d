"""Diffusion-prior posterior sampling: calibration of the uncertainty map, posterior-mean PSNR against BM4D and the
supervised deep model (in the same run), and seconds per 256³ volume for 8 samples.

    python benchmarks/bench_diffusion.py            # ≈ 10 min on 2 shared CPU cores
    python benchmarks/bench_diffusion.py --quick    # one level, fewer methods

Held-out volume (never trained on; CC BY-NC, evaluation only): ``rorden_chris_pd_0.86x0.86x2.4mm`` — the centre crop
and the Rician noise levels (% of the crop's volume maximum, PSNR peak = that maximum, mask = reference > 2 % of it)
of ``bench_deep.py``, so the figures compare with ``results/deep.json``. All methods get the true σ.

Calibration: with the posterior mean ``m`` and standard deviation ``s`` per voxel, the coverage at ``k`` is the
fraction of voxels (in the mask) with ``|truth − m| ≤ k·s``; a calibrated Gaussian posterior gives ``2Φ(k) − 1``
(95.4 % at ``k = 2``; the target is ≥ 90 %). The reliability curve bins voxels by predicted ``s`` (deciles) and
compares the mean predicted ``s`` with the observed RMS error in each bin (Levi et al., "Evaluating and calibrating
uncertainty prediction in regression tasks", 2019): calibrated points lie on the diagonal.

Speed: the sampler's cost is one 2D network call per slice per step per sample, so a 256³ volume at 8 samples costs
``256 × steps × 8`` slice calls. Measured on a 256×256 slab of a few slices and extrapolated (stated so in the JSON).
Results: ``benchmarks/results/diffusion.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import data_root  # noqa: E402

CASE = ("rorden_chris_pd_0.86x0.86x2.4mm.nii.gz", (96, 96, 32))
LEVELS = (3, 5)
KS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def centre_crop(x: np.ndarray, size) -> tuple[slice, ...]:
    return tuple(slice(max(0, (n - s) // 2), max(0, (n - s) // 2) + min(n, s)) for n, s in zip(x.shape, size))


def calibration(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, mask: np.ndarray) -> dict:
    """Coverage and reliability of ``std`` (:func:`medden.metrics.uncertainty_calibration`)."""
    from medden.metrics import uncertainty_calibration

    cal = uncertainty_calibration(truth, mean, std, mask, ks=KS).to_dict()
    return {"coverage_2sd": cal["coverage_2sd"],
            "coverage": cal["coverage"], "nominal_gaussian": cal["nominal"], "reliability": cal["reliability"],
            "mean_std": cal["mean_std"], "rmse": cal["rmse"], "std_to_rmse": cal["std_to_rmse"]}


def bench_quality(args) -> list[dict]:
    import medden
    from medden.denoisers import diffusion as dd
    from medden.metrics.reference import psnr, ssim_3d

    name, size = CASE
    full = medden.load_volume(data_root(args.data) / "mri" / name)
    clean = np.ascontiguousarray(full.data[centre_crop(full.data, size)])
    peak = float(clean.max())
    mask = clean > 0.02 * peak
    others = [m for m in args.methods.split(",") if m]
    rows = []
    for level in args.levels:
        sigma = level / 100 * peak
        noisy = medden.noise.rician(clean, sigma=sigma, generator=args.seed + level)
        vol = medden.Volume(noisy, full.affine, modality="MR")
        row = {"volume": name, "crop": list(size), "level_percent_of_max": level, "sigma": sigma,
               "noisy": {"psnr": psnr(clean, noisy, mask, data_range=peak)}}
        for lam in args.guidance:
            t = time.perf_counter()
            mean, std = dd.posterior_volume(vol, sigma=sigma, device="cpu", samples=args.samples, steps=args.steps,
                                            seed=args.seed, guidance=lam, weights=args.weights)
            sec = time.perf_counter() - t
            key = "diffusion" if lam == 0 else f"diffusion (λ={lam:g})"
            row[key] = {"psnr": psnr(clean, mean.data, mask, data_range=peak),
                        "ssim": ssim_3d(clean, mean.data, mask, data_range=peak), "seconds": sec,
                        "samples": args.samples, "steps": args.steps,
                        "calibration": calibration(clean, mean.data, std.data, mask)}
            print(f"σ {level}% {key}: PSNR {row[key]['psnr']:.2f} dB, ±2σ coverage "
                  f"{row[key]['calibration']['coverage_2sd']:.1%}, "
                  f"std/RMSE {row[key]['calibration']['std_to_rmse']:.2f}, "
                  f"{sec:.0f} s", flush=True)
        for m in others:
            spec = medden.denoisers.get_method(m)
            if not spec.available:
                row[m] = {"skipped": "not available (weights or extra missing)"}
                continue
            t = time.perf_counter()
            out = medden.denoise(vol, method=m, sigma=sigma, device="cpu")
            sec = time.perf_counter() - t
            row[m] = {"psnr": psnr(clean, out.data, mask, data_range=peak),
                      "ssim": ssim_3d(clean, out.data, mask, data_range=peak), "seconds": sec}
            print(f"σ {level}% {m}: PSNR {row[m]['psnr']:.2f} dB, {sec:.0f} s", flush=True)
        print(f"σ {level}% noisy: PSNR {row['noisy']['psnr']:.2f} dB", flush=True)
        rows.append(row)
    # the other likelihoods on the same crop, diffusion only: additive Gaussian, and Poisson counts scaled so the
    # standard deviation at the maximum is the same fraction of it
    for model in args.other_noise:
        level = args.levels[-1]
        if model == "gaussian":
            sigma = level / 100 * peak
            noisy = medden.noise.gaussian(clean, sigma=sigma, generator=args.seed + 100)
        else:
            counts = 1.0 / ((level / 100) ** 2 * peak)  # var = x / c: std at the peak = level % of the peak
            noisy = medden.noise.poisson(clean, counts_per_unit=counts, generator=args.seed + 200)
            sigma = float(np.sqrt(np.mean(clean[mask]) / counts))
        vol = medden.Volume(noisy.astype(np.float32), full.affine, modality="MR")
        t = time.perf_counter()
        mean, std = dd.posterior_volume(vol, sigma=sigma, device="cpu", samples=args.samples, steps=args.steps,
                                        seed=args.seed, likelihood=model, weights=args.weights)
        sec = time.perf_counter() - t
        row = {"volume": name, "crop": list(size), "noise": model, "level_percent_of_max": level, "sigma": sigma,
               "noisy": {"psnr": psnr(clean, noisy, mask, data_range=peak)},
               "diffusion": {"psnr": psnr(clean, mean.data, mask, data_range=peak), "seconds": sec,
                             "likelihood": model, "calibration": calibration(clean, mean.data, std.data, mask)}}
        print(f"{model} {level}%: noisy {row['noisy']['psnr']:.2f} dB, diffusion {row['diffusion']['psnr']:.2f} dB, "
              f"±2σ coverage {row['diffusion']['calibration']['coverage_2sd']:.1%}, {sec:.0f} s", flush=True)
        rows.append(row)
    return rows


def bench_speed(args) -> dict:
    """Seconds for one reverse step on a 256×256×``slices`` slab, extrapolated to 256³ × 8 samples × steps."""
    import torch

    from medden.denoisers import diffusion as dd

    rng = np.random.default_rng(0)
    slab = (rng.random((256, 256, args.speed_slices)) * 100).astype(np.float32)
    sigma = 3.0  # 3 % of the scale: t* ≈ 25, so every step of the default runs
    dd.posterior(slab[:, :, :2], sigma, samples=1, steps=1, weights=args.weights)  # load and warm up
    t = time.perf_counter()
    dd.posterior(slab, sigma, samples=1, steps=2, seed=0, weights=args.weights)
    sec = time.perf_counter() - t
    per_slice_step = sec / (2 * args.speed_slices)
    steps = args.steps
    return {"device": "cpu", "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "measured": f"256×256×{args.speed_slices} slab, 1 sample × 2 steps: {sec:.2f} s",
            "seconds_per_slice_step_256x256": per_slice_step,
            "steps": steps, "seconds_256cubed_8_samples": per_slice_step * 256 * 8 * steps,
            "extrapolated": True,
            "note": "one network call per slice, step and sample; the state arrays of a 256³ volume fit in memory, so "
                    "the cost is linear in slices × steps × samples. GPU: measured on a whole 256³ volume by "
                    "benchmarks/bench_gpu.py (results/gpu.json)."}


def bench_ct_quality(args) -> list[dict]:
    """Low-dose CT (the CT prior): the held-out chest scan and crop of ``bench_deep.py`` at 25 % and 10 % dose,
    σ and the CT noise map estimated (``sigma="auto"``), against the full-dose scan; BM4D and deep-ct in the same
    run. The full-dose reference carries its own noise, which the coverage counts as error."""
    import medden
    from bench_deep import CT_CASE, CT_DOSES, tissue_rois
    from medden.denoisers import diffusion as dd
    from medden.metrics.reference import psnr, ssim_3d
    from medden.noise import simulate

    full = medden.load_volume(data_root(args.data) / "ct" / CT_CASE)
    full = medden.Volume(full.data, full.affine, modality="CT", meta=full.meta)
    box = centre_crop(full.data, (128, 128, 48))
    ref = np.ascontiguousarray(full.data[box])
    mask = ref > -900
    rois = tissue_rois(ref)
    rows = []
    for dose in CT_DOSES:
        noisy = np.ascontiguousarray(simulate(full, "lowdose-ct-insertion", dose=dose, seed=args.seed).data[box])
        vol = medden.Volume(noisy, full.affine, modality="CT")
        row = {"volume": CT_CASE, "crop": [128, 128, 48], "dose": dose,
               "noisy": {"psnr": psnr(ref, noisy, mask, data_range=2000.0)}}
        t = time.perf_counter()
        mean, std = dd.posterior_volume(vol, sigma="auto", device="cpu", samples=args.samples, steps=args.steps,
                                        seed=args.seed, weights=args.ct_weights)
        outs = {"diffusion": (mean.data, time.perf_counter() - t)}
        for m in [m for m in args.ct_methods.split(",") if m]:
            t = time.perf_counter()
            outs[m] = (medden.denoise(vol, method=m, sigma="auto").data, time.perf_counter() - t)
        for m, (est, sec) in outs.items():
            bias = [float(est[b].mean() - ref[b].mean()) for b in rois]
            row[m] = {"psnr": psnr(ref, est, mask, data_range=2000.0), "ssim": ssim_3d(ref, est, mask, data_range=2000.0),
                      "max_abs_hu_bias": max(map(abs, bias)) if bias else None, "seconds": sec}
        row["diffusion"]["calibration"] = calibration(ref, mean.data, std.data, mask)
        print(f"CT dose {dose:.0%}: " + " | ".join(f"{m} {row[m]['psnr']:.2f} dB |bias|≤{row[m]['max_abs_hu_bias']:.2f} HU "
                                                   f"{row[m]['seconds']:.0f} s" for m in outs)
              + f" | noisy {row['noisy']['psnr']:.2f} dB; diffusion ±2σ coverage "
                f"{row['diffusion']['calibration']['coverage_2sd']:.1%}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--guidance", default="0", help="comma-separated λ values of the data-consistency step "
                                                     "(0: the value tuned on validation, from the card)")
    ap.add_argument("--methods", default="bm4d,deep-mr", help="registry methods run in the same benchmark")
    ap.add_argument("--other-noise", default="gaussian,poisson", help="further noise models (diffusion only)")
    ap.add_argument("--speed-slices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", dest="data", default=None,
                    help="data folder (default: $MEDDEN_DATA, else ../shared/data beside the repository)")
    ap.add_argument("--weights", default="", help="a diffusion prior (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ct-weights", default="", help="the CT prior (default: the shipped one, when there is one)")
    ap.add_argument("--ct-methods", default="bm4d,deep-ct", help="registry methods run beside it on CT")
    ap.add_argument("--no-ct", action="store_true", help="skip the low-dose CT part")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffusion.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.levels = [int(v) for v in args.levels.split(",")]
    args.guidance = [float(v) for v in args.guidance.split(",")]
    args.other_noise = [v for v in args.other_noise.split(",") if v]
    if args.quick:
        args.levels, args.methods, args.other_noise = args.levels[:1], "bm4d", []
    from medden.models.diffusion import load_prior, shipped_prior_path

    weights = Path(args.weights) if args.weights else shipped_prior_path()
    _, card = load_prior(weights)
    tuned = card.noise.get("sampler", {})
    args.std_scale = float(tuned.get("uncertainty_scale", 1.0))
    t0 = time.perf_counter()
    result = {"prior": {"weights": weights.name, "config": card.config,
                        "training_steps": card.training.get("steps"), "training_minutes": card.training.get("minutes"),
                        "final_val_psnr_x0_dB": card.training.get("final_val_psnr_x0_dB"), "sampler": tuned},
              "quality": bench_quality(args), "speed": bench_speed(args)}
    ct_prior = Path(args.ct_weights) if args.ct_weights else shipped_prior_path("CT")
    if not args.no_ct and ct_prior != shipped_prior_path("MR"):
        args.ct_weights = str(ct_prior)
        _, ct_card = load_prior(ct_prior)
        result["ct_prior"] = {"weights": ct_prior.name, "config": ct_card.config,
                              "training_steps": ct_card.training.get("steps"),
                              "training_minutes": ct_card.training.get("minutes"),
                              "sampler": ct_card.noise.get("sampler", {})}
        result["ct"] = bench_ct_quality(args)
    result["total_seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    sp = result["speed"]
    print(f"speed: {sp['seconds_per_slice_step_256x256']:.3f} s per 256² slice-step on CPU → "
          f"{sp['seconds_256cubed_8_samples']:.0f} s per 256³ volume, 8 samples × {sp['steps']} steps (extrapolated)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
