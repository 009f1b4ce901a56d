"""Benchmark the classical and block-matching denoisers against bm4d.

Default set (phantoms only, about 2–4 minutes on 2 CPU cores)::

    python benchmarks/bench_classical.py

With cropped real volumes from ``../shared/data`` (Rician 1/3/9 % for MR, low-dose CT or Gaussian 25 HU for CT)::

    python benchmarks/bench_classical.py --shared [--data-root DIR]

Options: ``--methods bm4d,nlm,...`` (default: every available CPU method in the registry), ``--scale 0.5`` (smaller
phantoms, for a quick look), ``--size 96`` (crop size of shared volumes), ``--sigma auto`` (methods estimate the noise
instead of receiving the true level), ``--name NAME`` (results go to ``benchmarks/results/NAME.json``; default
``classical`` or ``classical_shared``). bm4d always runs too, as the baseline the table compares to.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import data_root, format_table, phantom_cases, run_benchmark, shared_cases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="", help="comma-separated registry names (default: all available CPU ones)")
    ap.add_argument("--shared", action="store_true", help="add cropped ../shared/data volumes")
    ap.add_argument("--data-root", "--data", dest="data", default=None,
                    help="data folder (default: $MEDDEN_DATA, else ../shared/data beside the repository)")
    ap.add_argument("--size", type=int, default=96, help="crop size (voxels) of shared volumes")
    ap.add_argument("--scale", type=float, default=1.0, help="phantom size factor (1.0: 96 voxels in-plane)")
    ap.add_argument("--sigma", choices=("true", "auto"), default="true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)

    import medden

    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:
        methods = [s.name for s in medden.list_methods() if s.available and s.family in ("classical", "block matching")]
    cases = phantom_cases(seed=args.seed, scale=args.scale)
    if args.shared:
        extra = shared_cases(data_root(args.data), size=args.size, seed=args.seed)
        if not extra:
            print(f"note: no shared volumes found under {data_root(args.data)}; phantoms only")
        cases += extra
    name = args.name or ("classical_shared" if args.shared else "classical")
    print(f"{len(cases)} case(s) × {len(set(methods) | {'bm4d'})} method(s); results → benchmarks/results/{name}.json")
    result = run_benchmark(methods, cases, name=name, sigma=args.sigma)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
