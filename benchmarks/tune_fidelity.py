"""Choose the deep models' local-mean fidelity scale (``fidelity_mm``) on validation volumes only.

    python benchmarks/tune_fidelity.py            # about 4 minutes on 2 CPU cores
    python benchmarks/tune_fidelity.py --write    # and record the chosen scales on the shipped model cards

Validation volumes (none is in a shipped model's training data, none is a benchmark's test volume):
* MR: the three IXI002 volumes (T2 is the MR model's validation volume; PD and T1, same subject, are unused),
  Rician noise at 1, 3, 5, 7, 9 % of the maximum, PSNR inside the head, true σ.
* CT: the top slices (128–163) of ``totalseg_chest_cta_1p5mm`` (the CT model's validation slices), projection-domain
  low-dose insertion at 25 % and 10 % dose, two noise seeds, σ estimated as a user's would be; reference = the
  full-dose scan; PSNR over the body and the largest |HU bias| in soft-tissue ROIs.

The chosen scale is the one with the highest mean validation PSNR over all cases (0 = no fidelity is a candidate).
Results: ``benchmarks/results/fidelity_tuning.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_deep import centre_crop, tissue_rois  # noqa: E402
from benchmarks.harness import data_root  # noqa: E402

SCALES_MM = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
MR_VALIDATION = ("ixi002_guys_t2_1x1x6mm.nii.gz", "ixi002_guys_pd_6x1x1mm.nii.gz", "ixi002_guys_t1_1x6x1mm.nii.gz")
MR_LEVELS = (1, 3, 5, 7, 9)
CT_VALIDATION = ("totalseg_chest_cta_1p5mm.nii.gz", slice(128, 164))
CT_DOSES = (0.25, 0.10)
#: the fidelity domain each shipped model's noise calls for (MR magnitude: Rician power; CT: linear)
DOMAIN = {"MR": "power", "CT": "linear"}


def scan_scales(vol, noisy: np.ndarray, sigma, score) -> dict[float, dict]:
    """Denoise once without fidelity, then score the output under every candidate scale."""
    import medden
    from medden.denoisers.deep import card_fidelity
    from medden.denoisers.fidelity import local_mean_fidelity
    from medden.models import read_card, shipped_path

    name = "deep-mr" if vol.modality == "MR" else "deep-ct"
    coils = card_fidelity(read_card(shipped_path(name)))["coils"]
    raw = medden.denoise(vol, method=name, sigma=sigma, fidelity_mm=0).data
    sig = medden.denoisers.estimate_sigma(vol) if isinstance(sigma, str) else sigma
    return {s: score(local_mean_fidelity(raw, noisy, sig, scale_mm=s, spacing=vol.spacing,
                                         domain=DOMAIN[vol.modality], coils=coils)) for s in SCALES_MM}


def tune_mr(data: Path, seed: int) -> list[dict]:
    import medden
    from medden.metrics.reference import psnr

    rows = []
    for name in MR_VALIDATION:
        full = medden.load_volume(data / "mri" / name)
        peak = float(full.data.max())
        clean = np.ascontiguousarray(full.data[centre_crop(full.data, (128, 128, 128))])
        mask = clean > 0.02 * peak
        for level in MR_LEVELS:
            sigma = level / 100 * peak
            noisy = medden.noise.rician(clean, sigma=sigma, generator=seed + level)
            vol = medden.Volume(noisy, full.affine, modality="MR")
            res = scan_scales(vol, noisy, sigma, lambda x: {"psnr": psnr(clean, x, mask, data_range=peak)})
            rows.append({"volume": name, "level_percent_of_max": level, "by_scale_mm": res})
            print(f"{name[:24]:24s} {level}%  " + "  ".join(f"{s}mm {r['psnr']:.2f}" for s, r in res.items()),
                  flush=True)
    return rows


def tune_ct(data: Path) -> list[dict]:
    import medden
    from medden.metrics.reference import psnr
    from medden.noise import simulate

    name, zs = CT_VALIDATION
    full = medden.load_volume(data / "ct" / name)
    full = medden.Volume(full.data, full.affine, modality="CT", meta=full.meta)
    ref = np.ascontiguousarray(full.data[:, :, zs])
    mask = ref > -900
    rois = tissue_rois(ref)

    def score(x):
        bias = [float(x[b].mean() - ref[b].mean()) for b in rois]
        return {"psnr": psnr(ref, x, mask, data_range=2000.0), "max_abs_hu_bias": max(map(abs, bias))}

    rows = []
    for dose in CT_DOSES:
        for seed in (0, 1):
            noisy = np.ascontiguousarray(simulate(full, "lowdose-ct-insertion", dose=dose, seed=seed).data[:, :, zs])
            vol = medden.Volume(noisy, full.affine, modality="CT")
            res = scan_scales(vol, noisy, "auto", score)
            rows.append({"volume": name, "dose": dose, "seed": seed, "by_scale_mm": res})
            print(f"{name[:24]:24s} dose {dose} seed {seed}  " + "  ".join(
                f"{s}mm {r['psnr']:.2f}/{r['max_abs_hu_bias']:.2f}HU" for s, r in res.items()), flush=True)
    return rows


def choose(rows: list[dict]) -> tuple[float, dict[float, float]]:
    mean = {s: float(np.mean([r["by_scale_mm"][s]["psnr"] for r in rows])) for s in SCALES_MM}
    return max(mean, key=mean.get), mean


def write_card(model: str, scale: float, domain: str, how: str) -> None:
    from medden.models import shipped_path

    path = shipped_path(model).with_suffix(".json")
    card = json.loads(path.read_text())
    card.setdefault("noise", {})["fidelity"] = {"scale_mm": scale, "domain": domain, "tuned_on": how,
                                                "command": "python benchmarks/tune_fidelity.py --write"}
    path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"recorded fidelity {scale} mm ({domain}) on {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", "--data", dest="data", default=None,
                    help="data folder (default: $MEDDEN_DATA, else ../shared/data beside the repository)")
    ap.add_argument("--seed", type=int, default=100, help="noise seed (not the benchmark's, which is 0)")
    ap.add_argument("--write", action="store_true", help="record the chosen scales on the shipped model cards")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    data = data_root(args.data)
    mr, ct = tune_mr(data, args.seed), tune_ct(data)
    (mr_best, mr_mean), (ct_best, ct_mean) = choose(mr), choose(ct)
    print("MR mean validation PSNR by scale:", {s: round(v, 3) for s, v in mr_mean.items()}, "→", mr_best, "mm")
    print("CT mean validation PSNR by scale:", {s: round(v, 3) for s, v in ct_mean.items()}, "→", ct_best, "mm")
    out = ROOT / "benchmarks" / "results" / "fidelity_tuning.json"
    out.write_text(json.dumps({"command": "python benchmarks/tune_fidelity.py " + " ".join(argv or sys.argv[1:]),
                               "mr": {"rows": mr, "mean_psnr_by_scale_mm": mr_mean, "chosen_mm": mr_best},
                               "ct": {"rows": ct, "mean_psnr_by_scale_mm": ct_mean, "chosen_mm": ct_best}},
                              indent=1, default=float) + "\n")
    print(f"wrote {out}")
    if args.write:
        write_card("deep-mr", mr_best, DOMAIN["MR"], "IXI002 T2/PD/T1 (validation), Rician 1-9 %, mean PSNR")
        write_card("deep-ct", ct_best, DOMAIN["CT"], "totalseg chest CTA slices 128-163 (validation), 25 % and 10 % "
                   "dose, mean PSNR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
