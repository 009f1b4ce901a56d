"""The figures behind ``auto``: each method's mean PSNR difference to BM4D on clean references, from
``bench_clean.py`` results, and the order the ranking rule gives them.

    python benchmarks/rank_methods.py                                  # from benchmarks/results/clean.json
    python benchmarks/rank_methods.py clean.json ct_candidate.json     # later files replace the rows they repeat
    python benchmarks/rank_methods.py --write                          # update medden/denoisers/ranking.json

Cases: MR at Rician 5 % and CT at 25 % dose, every reference and voxel size where all the ranked methods ran. Rows
whose reference is itself a noisy scan (``cta-train``: the training row, there to show underfitting) are left out —
they reward a method for keeping noise. Rule: rank by the mean difference to BM4D; differences under 0.5 dB are ties,
broken by speed (``voxels_per_second`` in ranking.json). Methods without clean-reference figures keep their place
after the measured ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RANKING = ROOT / "medden" / "denoisers" / "ranking.json"
LEVEL = {"MR": ("level_percent_of_max", 5), "CT": ("dose", 0.25)}
NOISY_REFERENCES = {"cta-train"}
TIE_DB = 0.5


def case_table(files: list[Path]) -> dict[str, dict[tuple, dict[str, float]]]:
    """``{modality: {case: {method: d_psnr}}}`` at the ranking level, later files replacing repeated rows."""
    table: dict[str, dict[tuple, dict[str, float]]] = {"MR": {}, "CT": {}}
    for f in files:
        for r in json.loads(f.read_text())["rows"]:
            key, level = LEVEL[r["modality"]]
            if r.get(key) != level or r["reference"] in NOISY_REFERENCES or r["method"] == "noisy":
                continue
            case = (r["reference"], tuple(round(v, 2) for v in r["voxel_mm"]))
            table[r["modality"]].setdefault(case, {})[r["method"]] = float(r["d_psnr"])
    return table


def figures(cases: dict[tuple, dict[str, float]]) -> dict[str, tuple[float, int]]:
    """``{method: (mean d_psnr, cases)}`` over the cases every method (of those in every case) ran."""
    methods = set.intersection(*(set(v) for v in cases.values())) if cases else set()
    return {m: (round(sum(v[m] for v in cases.values()) / len(cases), 2), len(cases)) for m in sorted(methods)}


def order(measured: dict[str, tuple[float, int]], speed: dict[str, float], previous: list[str]) -> list[str]:
    ranked = sorted(measured, key=lambda m: -measured[m][0])
    changed = True
    while changed:  # ties (under TIE_DB) go to the faster method
        changed = False
        for i in range(len(ranked) - 1):
            a, b = ranked[i], ranked[i + 1]
            if a != "bm4d" and abs(measured[a][0] - measured[b][0]) < TIE_DB and speed.get(b, 0) > speed.get(a, 0):
                ranked[i], ranked[i + 1] = b, a
                changed = True
    return ranked + [m for m in previous if m not in ranked]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", default=["clean.json"], help="bench_clean result files (in results/)")
    ap.add_argument("--write", action="store_true", help="update medden/denoisers/ranking.json")
    args = ap.parse_args(argv)
    files = [p if p.is_file() else RESULTS / p.name for p in map(Path, args.results)]
    ranking = json.loads(RANKING.read_text())
    speed = {m: v.get("voxels_per_second", 0) for m, v in ranking["methods"].items()}
    for modality, cases in case_table(files).items():
        shown = figures(cases)
        print(f"{modality}: {len(cases)} cases — " + ", ".join(f"{m} {d:+.2f} dB" for m, (d, _) in shown.items()))
        measured = {m: v for m, v in shown.items() if ":" not in m}  # variants (deep-ct:fidelity_mm=2) are shown only
        new_order = order(measured, speed, ranking["rank"][modality])
        print(f"  rank: {' > '.join(new_order)}")
        for m, (d, n) in measured.items():
            entry = ranking["methods"].setdefault(m, {"d_psnr_db": {}, "cases": {}})
            entry["d_psnr_db"][modality], entry["cases"][modality] = d, n
        ranking["rank"][modality] = new_order
    if args.write:
        ranking["quality_source"] = (f"python benchmarks/rank_methods.py {' '.join(f.name for f in files)} "
                                     "(bench_clean.py results: clean references only, BM4D in the same run)")
        RANKING.write_text(json.dumps(ranking, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {RANKING.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
