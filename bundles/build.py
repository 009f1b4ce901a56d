"""Write the MONAI bundles (model-zoo layout) of medden's shipped models from their weights and cards.

    python bundles/build.py          # after exporting new weights into medden/models/weights/

Each bundle ``bundles/NAME/`` gets configs/metadata.json, configs/inference.json (with the ``network_def`` MONAI's
``verify_net_in_out`` builds), configs/train.json, models/ (copies of the package's weights and card, byte-identical,
so the bundle folder stands alone), large_files.yml (the weights' sha256), docs/README.md (generated, unless edited by
hand: remove the "generated" marker to keep it) and LICENSE. The medden training config of each model is
``bundles/NAME/configs/medden_train.json``.

Check a bundle offline against MONAI's metadata schema (a copy lies in ``bundles/monai_schema/``)::

    python -m monai.bundle verify_metadata --meta_file bundles/NAME/configs/metadata.json \\
        --filepath bundles/monai_schema/meta_schema_20240725.json
    python -m monai.bundle verify_net_in_out network_def --config_file bundles/NAME/configs/inference.json \\
        --meta_file bundles/NAME/configs/metadata.json
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = "https://project-monai.github.io/schema/meta_schema_20240725.json"
BUNDLES = {
    "medden_mr_rician_unet": {"method": "deep-mr", "config": "bundles/medden_mr_rician_unet/configs/medden_train.json",
                              "task": "Denoising of 3D MR magnitude images (Rician noise, 1–15 % of the maximum)",
                              "modality": "MR", "range": "MR magnitude in scanner units (any scale)"},
    "medden_ct_lowdose_unet": {"method": "deep-ct", "config": "bundles/medden_ct_lowdose_unet/configs/medden_train.json",
                               "task": "Denoising of low-dose 3D CT (5–50 % of the clinical dose), Hounsfield units",
                               "modality": "CT", "range": "CT in Hounsfield units"},
}


def network_def(card: dict) -> dict:
    """The network as a MONAI config component (``_target_``): the card's architecture and configuration, so
    ``python -m monai.bundle verify_net_in_out network_def`` builds the very network the weights fit. It takes one
    ``[B, 2, D, H, W]`` tensor (the normalised image and its noise-level map) and returns the denoised image."""
    from medden.models import ARCHITECTURES

    cls = ARCHITECTURES[card["architecture"]]
    return {"_target_": f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}", **card["config"]}


def inference_config(method: str, card: dict) -> dict:
    """Denoise every scan in @dataset_dir into @output_dir with medden's public load_volume / denoise / save_volume.

    ``bundle_root`` is found from the config file's own location (``medden.bundle.bundle_root``), so the bundle runs
    from any folder; a missing or empty dataset folder, or missing weights, stop the run with one ``error:`` line.
    """
    return {
        "imports": ["$import os", "$import medden", "$import medden.bundle"],
        "bundle_root": "$medden.bundle.bundle_root()",
        "dataset_dir": "data",
        "output_dir": "denoised",
        "method": method,
        "sigma": "auto",
        "device": "auto",
        "network_def": network_def(card),
        "weights": "$medden.bundle.weights_file(@bundle_root)",
        "extensions": [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm"],
        "scans": "$medden.bundle.scan_paths(@dataset_dir, @extensions)",
        "output_path": "$lambda p: os.path.join(@output_dir, os.path.basename(p.rstrip(os.sep)))",
        "denoise_one": "$lambda p: medden.save_volume(medden.denoise(medden.load_volume(p), method=@method, "
                       "sigma=@sigma, device=@device, weights=@weights), @output_path(p), overwrite=True)",
        "initialize": ["$print(len(@scans), 'scan(s) in', @dataset_dir, '->', @output_dir, 'with', @weights)",
                       "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$[print(@denoise_one(p) or p) for p in @scans]"],
        "finalize": [],
    }


def train_config() -> dict:
    """Train (or resume) with medden's own loop from the bundle's ``configs/medden_train.json``."""
    return {
        "imports": ["$import os", "$import medden", "$import medden.bundle", "$import medden.training"],
        "bundle_root": "$medden.bundle.bundle_root()",
        "config_file": "$os.path.join(@bundle_root, 'configs', 'medden_train.json')",
        "config": "$medden.training.load_config(@config_file)",
        "initialize": [],
        "run": ["$medden.training.train(@config)"],
        "finalize": [],
    }


def multi_gpu_train_config() -> dict:
    """Override of train.json for ``torchrun`` (MONAI convention): medden's loop joins the process group itself
    (NCCL on GPUs, gloo on CPUs) and wraps the network in DistributedDataParallel; rank 0 logs and exports.

        torchrun --standalone --nproc_per_node=4 -m monai.bundle run \\
            --config_file "['bundles/NAME/configs/train.json','bundles/NAME/configs/multi_gpu_train.json']"
    """
    return {
        # the whole list: a second config file replaces train.json's "imports" rather than adding to them
        "imports": ["$import os", "$import torch", "$import medden", "$import medden.bundle",
                    "$import medden.training"],
        "device": "$'cuda' if torch.cuda.is_available() else 'cpu'",
        "config": "$medden.training.load_config(@config_file, device=@device)",
    }


def metadata(name: str, spec: dict, card: dict) -> dict:
    import monai
    import numpy
    import torch

    import medden

    tr = card.get("training", {})
    return {
        "schema": SCHEMA,
        "version": card.get("version", "1.0.0"),
        "changelog": card.get("changelog") or {card.get("version", "1.0.0"): "first release with medden "
                                                                               + medden.__version__},
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"medden": medden.__version__, "safetensors": "0.4", "nibabel": "5.0"},
        "supported_apps": {},
        "name": name,
        "task": spec["task"],
        "description": f"Noise-level-conditioned 3D U-Net ({card['architecture']}, config {card['config']}) run by "
                       f"medden with sliding-window inference and Gaussian blending; the noise level is estimated "
                       f"from the scan (medden.noise.estimate_noise). Normalisation: {card['normalisation']}.",
        "authors": "medden contributors",
        "copyright": "Copyright (c) medden contributors; weights trained on the volumes listed in docs/README.md",
        "data_source": "; ".join(f"{data_path(d['path'], spec['modality'])} ({d['licence']})"
                                 for d in tr.get("data", [])) + " (paths relative to the data root, MEDDEN_DATA)",
        "data_type": "nifti, nrrd, mha or DICOM (anything medden.load_volume reads)",
        "intended_use": "Research denoising; not a medical device.",
        "references": ["Zhang et al., FFDNet, IEEE TIP 2018 (noise-level map as input)",
                       "Falk et al., U-Net, Nature Methods 2019"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude" if spec["modality"] == "MR" else "hounsfield",
                                 "modality": spec["modality"], "num_channels": 2,
                                 "spatial_shape": ["16*n", "16*n", "16*n"], "dtype": "float32",
                                 "value_range": [], "is_patch_data": True,
                                 "channel_def": {"0": "normalised image", "1": "noise level (same units)"}}},
            "outputs": {"pred": {"type": "image", "format": "magnitude" if spec["modality"] == "MR" else "hounsfield",
                                 "num_channels": 1, "spatial_shape": ["16*n", "16*n", "16*n"], "dtype": "float32",
                                 "value_range": [], "is_patch_data": True,
                                 "channel_def": {"0": "denoised normalised image"}}},
        },
    }


LICENSE = """Apache License 2.0 applies to the configuration files of this bundle (medden's licence).

The weights in models/ were trained on the volumes listed in docs/README.md; each volume's licence is stated there
(all permissive: ICBM 2009a template notice, BSD-2-Clause, CC BY 4.0). Keep those notices with the weights.
"""


HELD_OUT = {"MR": ["lindner_mr_gd_t1ce_brain_1mm.nii.gz (no licence stated)",
                   "rorden_chris_pd_0.86x0.86x2.4mm.nii.gz (CC BY-NC 4.0)",
                   "rorden_chris_t1_0.88mm.nii.gz (CC BY-NC 4.0)"],
            "CT": ["pyradiomics_lung1_chest.nii.gz (another source than the training volumes)"]}


#: Folder of each modality's volumes under the data root (the layout of the data README).
DATA_FOLDER = {"MR": "mri", "CT": "ct"}


def data_path(path: str, modality: str) -> str:
    """A training volume named relative to the data root (``MEDDEN_DATA``): ``mri/NAME`` or ``ct/NAME``, never the
    absolute path of the machine that trained the model."""
    p = Path(path)
    return p.as_posix() if not p.is_absolute() and len(p.parts) > 1 else f"{DATA_FOLDER[modality]}/{p.name}"


def model_doc(name: str, spec: dict, card: dict) -> str:
    """The model's docs/README.md: what it is, the exact training command, data with licences, curves, benchmark."""
    tr = card.get("training", {})
    lines = [f"# {name}", "", spec["task"] + ".", "",
             f"- Architecture: `{card['architecture']}` {card['config']} — MONAI BasicUNet, bias-free (homogeneous: "
             "`f(a·x, a·σ) = a·f(x, σ)`), the noise level as a second input channel, residual output.",
             f"- Normalisation: {card['normalisation']}",
             f"- Noise: {card['noise']}",
             f"- Weights: `models/model.safetensors`, a copy of `medden/models/weights/{Path(card['name']).name}"
             f".safetensors` (sha256 `{card['sha256']}`, also in `large_files.yml`)",
             "", "## Use", "", "From any folder (the bundle finds its own `models/` from the config file's location; "
             "`--bundle_root DIR` overrides it); a missing or empty dataset folder stops with one `error:` line:", "",
             "```bash", f"python -m monai.bundle run --config_file bundles/{name}/configs/inference.json \\",
             "    --dataset_dir scans/ --output_dir denoised/",
             f"python -m monai.bundle verify_metadata --meta_file bundles/{name}/configs/metadata.json \\",
             "    --filepath bundles/monai_schema/meta_schema_20240725.json        # offline",
             f"python -m monai.bundle verify_net_in_out network_def --config_file bundles/{name}/configs/inference.json "
             "\\", f"    --meta_file bundles/{name}/configs/metadata.json",
             f"python -m monai.bundle download_large_files --bundle_path bundles/{name}   # checks the weights' sha256",
             "```", "", "`network_def` takes one `[B, 2, D, H, W]` tensor (the normalised image and its noise-level "
             "map) and returns the denoised normalised image.", "", "## Training", ""]
    stages = tr.get("stages") or [{"stage": 0, "command": tr.get("command") or f"medden train {spec['config']}",
                                   "hardware": tr.get("hardware", "2 shared CPU cores"), "wall_minutes": tr.get("minutes")}]
    if len(stages) > 1:
        lines += ["The weights come from stages run in order, each initialised from the one before (configs in "
                  "`configs/` and `configs/stages/`; each stage exports what the next one loads):", ""]
    lines += ["```bash"] + [f"{st['command']}    # stage {st['stage']}: {st['hardware']}, {st['wall_minutes']} min"
                            for st in stages] + ["```", "",
             f"Last stage: mode {tr.get('mode')}, {tr.get('steps')} steps of {tr.get('batch')} patches "
             f"{tr.get('patch_size')}, loss {tr.get('loss')}"
             + (f" + {tr['lowpass_weight']} × the same on 8³ block means" if tr.get("lowpass_weight") else "")
             + f", {tr.get('minutes')} min on {tr.get('hardware', '2 shared CPU cores')}"
             + (f", initialised from `{tr['init_weights']}`" if tr.get("init_weights") else "") + ". "
             "Each stage is resumable: rerunning its command continues from its checkpoint folder. The CPU recipe "
             "(stage 0) runs anywhere; the GPU stages also run on a CPU, many times slower.", "",
             "Training volumes (paths relative to the data root, the folder named by `MEDDEN_DATA`; its README "
             "gives each volume's provenance):", ""]
    for d in tr.get("data", []):
        extra = f", average-pooled ×{d['downsample']} along its fine axes (a cleaner target)" if d.get("downsample", 1) > 1 else ""
        extra += f", slices {d['slices'][0]}–{d['slices'][1]}" if d.get("slices") else ""
        extra += (f"; its noise-free piecewise-smooth version ({d['piecewise_smooth_mm']:g} mm local means per tissue "
                  "class), a supervised target" if d.get("piecewise_smooth_mm") else
                  "; Recorrupted-to-Recorrupted (its own noise)" if d.get("target") == "noisy" else "")
        lines.append(f"- `{data_path(d['path'], spec['modality'])}` — {d['licence']}{extra}")
    if tr.get("synthetic_volumes"):
        lines.append(f"- {tr['synthetic_volumes']} synthetic piecewise-smooth volumes (random ellipsoids, bias field, "
                     "texture; `medden.training.data.synthetic_volume`)")
    lines += ["", "Validation (monitoring only): " + ", ".join(f"`{data_path(d['path'], spec['modality'])}` ({d['licence']})"
                                                          for d in tr.get("validation", [])),
              "", "Inference-time local-mean fidelity (`medden.denoisers.fidelity`): "
              + (f"{fid['scale_mm']} mm, {fid['domain']} domain, chosen by `{fid.get('command', '')}` on "
                 f"{fid.get('tuned_on', '')}" if (fid := card.get("noise", {}).get("fidelity")) else "off"),
              "", "Held out of training and tuning, used for the benchmark: " + "; ".join(HELD_OUT[spec["modality"]]),
              "", "Curves: [curves.csv](curves.csv), ![curves](curves.png)", ""]
    lines += clean_tables(spec["modality"])
    return "\n".join(lines) + "\n"


#: the clean-reference results each modality's bundle README shows (benchmarks/bench_clean.py)
CLEAN_RESULTS = {"CT": ("clean_ct.json", "clean.json"), "MR": ("clean.json",)}


def clean_tables(modality: str) -> list[str]:
    """The model's figures on clean references (``benchmarks/results/clean_ct.json`` or ``clean.json``: phantoms,
    templates, piecewise-smooth volumes, BM4D in the same run) and, for CT, the whole-command speed
    (``speed.json``): the tables ``bench_clean.py`` printed for this modality, verbatim."""
    out: list[str] = []
    for name in CLEAN_RESULTS[modality]:
        path = ROOT / "benchmarks" / "results" / name
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        sections = [sec for sec in res.get("tables_markdown", "").split("### ") if sec.startswith(modality)]
        if not sections:
            continue
        out += ["## Benchmark on clean references (BM4D in the same run)", "",
                f"`{res.get('command', 'python benchmarks/bench_clean.py')}` (full figures and protocol: "
                f"`benchmarks/results/{name}`; see `benchmarks/README.md`).", ""]
        out += ["### " + sec.strip() + "\n" for sec in sections]
        break
    speed = ROOT / "benchmarks" / "results" / "speed.json"
    if modality == "CT" and speed.is_file():
        sp = json.loads(speed.read_text())
        w = sp.get("whole_command", {})
        if w:
            out += ["", f"Whole command on a 512×512×300 CT, 2 CPU cores (`python benchmarks/bench_speed_cli.py`, "
                    f"{sp.get('date_utc', '')}): `{sp['command']}` took {w['wall_median_s']:.0f} s wall (median of "
                    f"{len(w['runs'])}), peak {w['peak_rss_mb'] / 1024:.2f} GB; "
                    f"{sp.get('ratio_whole_command_vs_bm4d_cpu_time', float('nan')):.0f}× BM4D's voxels per CPU "
                    f"second ({sp.get('ratio_whole_command_vs_bm4d', float('nan')):.0f}× by wall time) in the same run."]
    gpu = ROOT / "benchmarks" / "results" / "gpu.json"
    if gpu.is_file():
        g = json.loads(gpu.read_text())
        key = "deep_ct_512x512x300" if modality == "CT" else "deep_mr_256cubed"
        if key in g:
            what = "a 512×512×300 CT" if modality == "CT" else "a 256³ volume"
            out += ["", f"On one {g['gpu']} ({g['torch']}, `python benchmarks/bench_gpu.py`): {what} in "
                    f"{g[key]['seconds']:.2f} s after a warm-up call (an earlier, narrower model with medden 0.1.0's "
                    "window choice; no GPU was lent to remeasure it since)."]
    return out + [""]


def large_files(files: dict[str, str]) -> str:
    """``large_files.yml`` (model-zoo convention) listing the weights with their sha256. The weights ship in the
    repository, so nothing is downloaded: ``python -m monai.bundle download_large_files --bundle_path bundles/NAME``
    finds each file in place and only checks its hash."""
    lines = ["# The weights ship with the bundle (models/); nothing is downloaded at run time.",
             "# python -m monai.bundle download_large_files --bundle_path bundles/NAME checks their sha256.",
             "large_files:"]
    for rel, digest in files.items():
        lines += [f'  - path: "{rel}"', '    url: ""', f'    hash_val: "{digest}"', '    hash_type: "sha256"']
    return "\n".join(lines) + "\n"


def build(name: str, spec: dict) -> Path:
    from medden.data import sha256_file
    from medden.models import SHIPPED, WEIGHTS_DIR

    weights = WEIGHTS_DIR / SHIPPED[spec["method"]]
    card = json.loads(weights.with_suffix(".json").read_text())
    if sha256_file(weights) != card["sha256"]:
        raise SystemExit(f"error: {weights} does not match the sha256 on its card; export the model again")
    root = ROOT / "bundles" / name
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for src, dst in ((weights, "model.safetensors"), (weights.with_suffix(".json"), "model.json")):
        copy = root / "models" / dst  # a real file: a bundle folder must stand alone (zipped, downloaded, copied)
        copy.unlink(missing_ok=True)
        shutil.copyfile(src, copy)
    dump = lambda obj, p: p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")  # noqa: E731
    dump(metadata(name, spec, card), root / "configs" / "metadata.json")
    dump(inference_config(spec["method"], card), root / "configs" / "inference.json")
    dump(train_config(), root / "configs" / "train.json")
    dump(multi_gpu_train_config(), root / "configs" / "multi_gpu_train.json")
    (root / "large_files.yml").write_text(large_files({"models/model.safetensors": card["sha256"]}))
    doc = root / "docs" / "README.md"
    if not doc.is_file() or "<!-- generated -->" in doc.read_text():
        doc.write_text("<!-- generated -->\n" + model_doc(name, spec, card))
    (root / "LICENSE").write_text(LICENSE)
    return root


if __name__ == "__main__":
    from medden.models import SHIPPED, WEIGHTS_DIR

    for bundle_name, bundle_spec in BUNDLES.items():
        if not (WEIGHTS_DIR / SHIPPED[bundle_spec["method"]]).is_file():
            print(f"skipped {bundle_name}: no weights exported yet")
            continue
        print(build(bundle_name, bundle_spec))
