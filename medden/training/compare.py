"""Compare MR denoising weights on clean references before shipping them: Rician noise at 1–9 % of the crop's
maximum on noise-free (or averaged) volumes, PSNR inside the object (voxels above 5 % of the maximum), the network
alone and with the shipped card's local-mean fidelity. A training volume is always one of the rows, so underfitting
shows apart from generalisation. ::

    python -m medden.training.compare A.safetensors B.safetensors --data-root DATA [--adapt-seconds N]

Which references: ``REFERENCES`` (relative to the data root) and one synthetic piecewise-smooth volume (seeded, not
one the trainer draws).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

#: (file under the data root, role, centre crop)
REFERENCES = (
    ("mri/pam50_small_t2_1x1x2mm.nii.gz", "held-out noise-free template (MIT)", (64, 64, 96)),
    ("mri/mni152_2009a_sym_t1_1mm.nii.gz", "training volume (noise-free template)", (96, 96, 96)),
)
LEVELS = (0.01, 0.03, 0.05, 0.07, 0.09)


def _crop(x: np.ndarray, size) -> np.ndarray:
    sl = tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + min(n, c)) for n, c in zip(x.shape, size))
    return np.ascontiguousarray(x[sl], dtype=np.float32)


def references(root: Path) -> list[tuple[str, str, np.ndarray, tuple]]:
    from medden.io import load_volume
    from medden.training.data import synthetic_volume

    out = []
    for name, role, size in REFERENCES:
        v = load_volume(root / name)
        out.append((Path(name).name, role, _crop(v.data, size), tuple(float(s) for s in v.spacing)))
    out.append(("synthetic (seed 999)", "held-out piecewise-smooth volume",
                synthetic_volume(np.random.default_rng(999), (96, 96, 96)), (1.0, 1.0, 1.0)))
    return out


def psnr(est: np.ndarray, ref: np.ndarray, mask: np.ndarray, peak: float) -> float:
    return 10 * math.log10(peak ** 2 / max(float(np.mean((est[mask] - ref[mask]) ** 2)), 1e-20))


def compare(weights: list[str], root: Path, adapt_seconds: float = 0.0, log=print) -> dict:
    """PSNR per reference, level and weights (network alone, and with the shipped card's fidelity)."""
    from medden.denoisers.deep import card_fidelity, run_model
    from medden.denoisers.fidelity import local_mean_fidelity
    from medden.models import load_model, shipped_path
    from medden.noise import rician

    fid = card_fidelity(load_model(shipped_path("deep-mr"))[1])
    table: dict = {"levels": list(LEVELS), "fidelity": fid, "rows": []}
    for name, role, clean, spacing in references(root):
        peak = float(clean.max())
        mask = clean > 0.05 * peak
        for i, level in enumerate(LEVELS):
            noisy = np.asarray(rician(clean, sigma=level * peak, generator=100 + i), np.float32)
            row = {"reference": name, "role": role, "level": level, "noisy": psnr(noisy, clean, mask, peak)}
            for w in weights:
                out = run_model(noisy, level * peak, w, spacing=spacing, fidelity_mm=0, adapt_seconds=adapt_seconds)
                row[Path(w).stem] = psnr(out, clean, mask, peak)
                if fid["scale_mm"] > 0:
                    out = local_mean_fidelity(out, noisy, level * peak, scale_mm=fid["scale_mm"], spacing=spacing,
                                              domain=fid["domain"], coils=fid["coils"])
                    row[Path(w).stem + "+fidelity"] = psnr(out, clean, mask, peak)
            table["rows"].append(row)
            log(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    return table


if __name__ == "__main__":
    args = sys.argv[1:]
    root = Path(args[args.index("--data-root") + 1]) if "--data-root" in args else None
    adapt = float(args[args.index("--adapt-seconds") + 1]) if "--adapt-seconds" in args else 0.0
    ws = [a for a in args if a.endswith(".safetensors")]
    if root is None or not ws:
        raise SystemExit("usage: python -m medden.training.compare A.safetensors [B ...] --data-root DIR "
                         "[--adapt-seconds N]")
    print(json.dumps(compare(ws, root, adapt), indent=1))
