"""Training the diffusion prior (:mod:`medden.models.diffusion`) on stacks of adjacent slices of clean volumes.

Each example is ``2·neighbours + 1`` adjacent slices (along the thick axis of an anisotropic volume, along a random
axis of an isotropic one), cropped to a square patch, normalised like inference (the card's normalisation — MR: the
99.9th percentile of the non-zero voxels; CT: :data:`~medden.models.card.CT_PRIOR_NORMALISATION` — then
``z = 2u − 1``), diffused to a step ``t`` with independent noise per slice (MONAI ``DDPMScheduler.add_noise``); the
loss is the mean squared error of the predicted noise of the centre slice (Ho et al., NeurIPS 2020). ``t`` is drawn
as ``⌊t_max·u²⌋`` (u uniform), which favours the low noise levels that denoising starts from. An exponential moving
average of the weights (decay ``ema``) is what is validated and exported.

The run is described by a typed :class:`~medden.training.config.PriorConfig` (``"kind": "diffusion-prior"``) and
trained by the same command and engine as the U-Nets (:mod:`medden.training.engine`: run folder named by config and
data, resume, schedule, non-finite skip, progress)::

    medden train medden/training/configs/diffusion_mr_prior.json --data-root DATA

The shipped priors' configs list their volumes and licences (never the held-out ``rorden_*``, ``lindner_*`` or
``ct/pyradiomics_lung1_chest`` volumes).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medden.models.card import CT_PRIOR_NORMALISATION, MR_NORMALISATION
from medden.training.config import DataSpec, PriorConfig
from medden.volume import Volume
from medden.training.engine import (
    Progress, StopRequest, cosine_lr, keep_record, optimiser_step, resume, run_dir, run_key, save_state, setup_device)
from medden.training.loop import write_curves

#: CT in the prior's units: z = 2·(HU − CT_OFFSET)/CT_SCALE − 1 = HU/1000 (air −1, water 0, dense bone ≈ 1)
CT_OFFSET, CT_SCALE = CT_PRIOR_NORMALISATION.offset, CT_PRIOR_NORMALISATION.scale


@dataclass
class SliceVolume:
    name: str
    data: np.ndarray  # normalised to z units ([-1, 1] for the bulk)
    spacing: tuple[float, float, float]


def _prior_units(data: np.ndarray, modality: str) -> np.ndarray:
    """The prior's ``z = 2u − 1`` of the card normalisation's ``u`` (CT clipped to [−1, 3])."""
    if modality == "CT":
        return np.clip(2 * CT_PRIOR_NORMALISATION.apply(data) - 1, -1, 3).astype(np.float32)
    return (2 * MR_NORMALISATION.fitted(data).apply(data) - 1).astype(np.float32)


def load_training_volumes(cfg: PriorConfig, log: Callable[[str], None] = print
                          ) -> tuple[list[SliceVolume], list[SliceVolume]]:
    """The training and validation volumes in the prior's units. Without ``cfg.validation``, the top
    ``cfg.validation_fraction`` of the last data entry's slices (last axis) are the validation set."""
    from medden.io import load_volume

    def read(spec: DataSpec) -> tuple[np.ndarray, tuple]:
        vol = load_volume(spec.path)
        z = _prior_units(np.asarray(vol.data, np.float32), cfg.modality)
        if spec.slices:
            z = z[:, :, spec.slices[0]:spec.slices[1]]
        log(f"  {Path(spec.path).name}: {z.shape}, spacing {tuple(round(float(s), 2) for s in vol.spacing)} mm")
        return z, tuple(float(s) for s in vol.spacing)

    train, val = [], []
    for i, spec in enumerate(cfg.data):
        z, sp = read(spec)
        name = Path(spec.path).name
        if not cfg.validation and i == len(cfg.data) - 1:
            cut = int(round(z.shape[2] * (1 - cfg.validation_fraction)))
            train.append(SliceVolume(name, np.ascontiguousarray(z[:, :, :cut - 4]), sp))
            val.append(SliceVolume(name + "[val]", np.ascontiguousarray(z[:, :, cut:]), sp))
        else:
            train.append(SliceVolume(name, z, sp))
    for spec in cfg.validation:
        z, sp = read(spec)
        val.append(SliceVolume(Path(spec.path).name, z, sp))
    return train, val


class StackSampler:
    """Random stacks of adjacent slices ``[B, 2k+1, P, P]`` (z units) from the volumes."""

    def __init__(self, volumes: list[SliceVolume], neighbours: int, patch: int, seed: int,
                 gain: tuple[float, float] = (0.9, 1.1)) -> None:
        self.volumes, self.k, self.patch, self.gain = volumes, neighbours, patch, gain
        self.rng = np.random.default_rng(seed)
        sizes = np.array([v.data.size for v in volumes], float)
        self.p = np.sqrt(sizes) / np.sqrt(sizes).sum()

    def _one(self) -> np.ndarray:
        from medden.conventions import slice_axis

        v = self.volumes[int(self.rng.choice(len(self.volumes), p=self.p))]
        sp = np.asarray(v.spacing)
        axis = slice_axis(v.spacing) if sp.max() > 1.2 * sp.min() else int(self.rng.integers(3))
        x = np.moveaxis(v.data, axis, 0)
        n, h, w = x.shape
        pad_h, pad_w = max(0, self.patch - h), max(0, self.patch - w)
        for _ in range(8):  # prefer stacks that are mostly object
            c = int(self.rng.integers(self.k, n - self.k)) if n > 2 * self.k else int(self.rng.integers(n))
            i = int(self.rng.integers(0, max(1, h - self.patch + 1)))
            j = int(self.rng.integers(0, max(1, w - self.patch + 1)))
            idx = np.clip(np.arange(c - self.k, c + self.k + 1), 0, n - 1)
            s = x[idx, i:i + self.patch, j:j + self.patch]
            if (s > -0.9).mean() > 0.3:
                break
        if pad_h or pad_w:
            s = np.pad(s, ((0, 0), (0, pad_h), (0, pad_w)), mode="constant", constant_values=-1)
        if self.rng.random() < 0.5:
            s = s[::-1]  # through-plane flip
        if self.rng.random() < 0.5:
            s = s[:, ::-1]
        if self.rng.random() < 0.5:
            s = s[:, :, ::-1]
        if self.rng.random() < 0.5 and abs(np.delete(sp, axis)[0] - np.delete(sp, axis)[1]) < 0.1:
            s = s.transpose(0, 2, 1)
        gain = self.rng.uniform(*self.gain)  # MR: robustness to the percentile normalisation; CT: none (HU)
        return ((s + 1) * gain - 1).astype(np.float32)

    def sample(self, batch: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.stack([self._one() for _ in range(batch)])))


def _validation(val: list[SliceVolume], neighbours: int, patch: int, n: int = 16) -> torch.Tensor:
    return StackSampler(val, neighbours, patch, seed=12345).sample(n)


def validate(net, stacks: torch.Tensor, sigmas=(0.04, 0.10), seed: int = 7) -> dict[str, float]:
    """One-step denoising quality of the prior at noise σ = 2 % and 5 % of the scale (z units 0.04, 0.10): mean PSNR
    of ``x̂₀`` and of the noisy centre slice (data range 1 in units of the 99.9th percentile), and the ε loss."""
    from medden.models.diffusion import t_for_sigma

    g = torch.Generator().manual_seed(seed)
    k = net.neighbours
    dev = next(net.parameters()).device
    p_in, p_out, losses = [], [], []
    net.eval()
    with torch.no_grad():
        for s in sigmas:
            t = t_for_sigma(net, s)
            a = float(net.alphas_cumprod[t])
            eps = torch.randn(stacks.shape, generator=g)
            xt = math.sqrt(a) * stacks + math.sqrt(1 - a) * eps
            pred = net(xt.to(dev), torch.full((len(stacks),), t, device=dev)).float().cpu()
            x0 = (xt[:, k:k + 1] - math.sqrt(1 - a) * pred) / math.sqrt(a)
            clean = stacks[:, k:k + 1]
            noisy = xt[:, k:k + 1] / math.sqrt(a)
            losses.append(float(torch.mean((pred - eps[:, k:k + 1]) ** 2)))
            p_out.append(10 * math.log10(4.0 / float(torch.mean((x0 - clean) ** 2))))
            p_in.append(10 * math.log10(4.0 / float(torch.mean((noisy - clean) ** 2))))
    net.train()
    return {"val_loss": float(np.mean(losses)), "val_psnr": float(np.mean(p_out)),
            "val_psnr_noisy": float(np.mean(p_in))}


def train_prior(cfg: PriorConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume: the same config and data only) the prior ``cfg`` describes; returns the record (and exports
    when ``cfg.export``). On a GPU the stacks are drawn on the CPU and moved over (they are small); the network
    step runs there."""
    from medden.models.diffusion import build_prior

    _, _, device = setup_device(cfg.device, cfg.threads)
    torch.manual_seed(cfg.seed)
    key = run_key(cfg)
    folder = run_dir(cfg, key)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(cfg.model_dump_json(indent=2))
    log(f"loading {len(cfg.data)} {cfg.modality} volumes")
    train_vols, val_vols = load_training_volumes(cfg, log)
    net = build_prior(**cfg.network).to(device).train()
    ema_net = copy.deepcopy(net).eval()
    for p in ema_net.parameters():
        p.requires_grad_(False)
    sched = net.make_scheduler()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sampler = StackSampler(train_vols, net.neighbours, cfg.patch, cfg.seed,
                           gain=(1.0, 1.0) if cfg.modality == "CT" else (0.9, 1.1))
    val = _validation(val_vols, net.neighbours, cfg.patch)
    step, elapsed, history = 0, 0.0, []
    last = folder / "last.pt"
    state = resume(last, key, device, log)
    if state is not None:
        net.load_state_dict(state["model"])
        ema_net.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        sampler.rng = np.random.default_rng(cfg.seed + step)
    else:
        log(f"new run {key}: checkpoints in {folder}")
    n_params = sum(p.numel() for p in net.parameters())
    log(f"training {net.architecture} {net.config} ({n_params / 1e6:.2f} M parameters): batch {cfg.batch_size}×"
        f"{net.in_channels}×{cfg.patch}² on {device}, wall budget {cfg.wall_minutes} min")
    budget = cfg.wall_minutes * 60 if cfg.wall_minutes else float("inf")

    def save() -> None:
        save_state(last, {"model": net.state_dict(), "ema": ema_net.state_dict(), "optimizer": opt.state_dict(),
                          "step": step, "elapsed": elapsed, "history": history, "config": net.config,
                          "run_key": key})

    start = time.perf_counter() - elapsed
    run_losses: list[float] = []
    gen = torch.Generator().manual_seed(cfg.seed + step)
    progress = Progress(cfg.progress_every, cfg.batch_size * net.in_channels * cfg.patch ** 2, log)
    k = net.neighbours
    with StopRequest(log) as stop:
        while step < cfg.max_steps and elapsed < budget and not stop.requested:
            lr = cosine_lr(opt, cfg.learning_rate, elapsed / budget if math.isfinite(budget) else step / cfg.max_steps,
                           floor=0.05)
            x0 = sampler.sample(cfg.batch_size).to(device, non_blocking=True)
            t = (net.t_max * torch.rand(cfg.batch_size, generator=gen) ** 2).long().clamp_(0, net.t_max - 1)
            t = t.to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            loss = torch.mean((net(sched.add_noise(original_samples=x0, noise=noise, timesteps=t), t)
                               - noise[:, k:k + 1]) ** 2)
            if optimiser_step(loss, net, opt):
                decay = min(cfg.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, p in zip(ema_net.parameters(), net.parameters()):
                        pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
                run_losses.append(float(loss.detach()))
            step += 1
            elapsed = time.perf_counter() - start
            progress.update(step, run_losses[-1] if run_losses else None, lr)
            if step % cfg.log_every == 0 or step >= cfg.max_steps or elapsed >= budget or stop.requested:
                rec = {"step": step, "epoch": step / cfg.log_every, "minutes": round(elapsed / 60, 2), "lr": lr,
                       "train_loss": float(np.mean(run_losses)) if run_losses else float("nan"),
                       **validate(ema_net, val)}
                run_losses = []
                keep_record(rec, history, save, folder)
                log(f"step {step} {rec['minutes']:.1f} min loss {rec['train_loss']:.4f} "
                    f"val ε-loss {rec['val_loss']:.4f} x̂0 PSNR {rec['val_psnr']:.2f} dB (noisy {rec['val_psnr_noisy']:.2f})")
    record = {"steps": step, "minutes": round(elapsed / 60, 1), "history": history, "batch": cfg.batch_size,
              "patch": cfg.patch, "lr": cfg.learning_rate, "ema": cfg.ema, "seed": cfg.seed, "threads": cfg.threads,
              "run_key": key, "run_dir": str(folder),
              "hardware": (torch.cuda.get_device_name() if device.startswith("cuda")
                           else f"{torch.get_num_threads()} CPU threads")}
    if cfg.export:
        log("tuning the sampler and fitting the uncertainty scale on the validation volume")
        sampler_record = calibrate_sampler(ema_net, val_vols, seed=cfg.seed, device=device, modality=cfg.modality,
                                           log=log)
        record["export"] = str(export_prior(ema_net, record, cfg, sampler=sampler_record, log=log))
    return record


def calibrate_sampler(net, val: list[SliceVolume], *, levels=None, guidances=(0.5, 1.0, 2.0, 4.0),
                      samples: int = 8, steps: int = 6, crop=(96, 96, 24), seed: int = 0, device: str = "cpu",
                      modality: str = "MR", log: Callable[[str], None] = print) -> dict:
    """Tune the sampler on the validation volume (never on test volumes) and fit the uncertainty scale.

    MR: Rician noise at ``levels`` (fractions of the crop's maximum; default 3 % and 5 %) on a centre crop of the
    validation volume. CT: projection-domain low-dose noise at ``levels`` (doses; default 25 % and 10 %) on the
    validation slab, sampled as a user's scan is (σ and the CT noise map estimated, weighted-Gaussian likelihood),
    against the full-dose slab. The guidance λ with the best mean PSNR of the posterior mean is kept. The uncertainty
    becomes ``c·√(std² + β·σ²)``: ``β`` from :func:`fit_uncertainty_floor` (the error the samples do not show, mostly
    where they agree), then ``c = q₀.₉₅₄(|truth − mean| / √(std² + β·σ²)) / 2`` so that ±2 of them cover 95.4 % of
    the validation voxels — σ-scaling recalibration (Levi et al. 2019; Kuleshov et al., ICML 2018) with a
    conformal-style quantile."""
    from medden.denoisers.diffusion import posterior
    from medden.noise import estimate_noise, rician, simulate

    v = val[0]
    z = v.data
    sl = tuple(slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + min(n, c)) for n, c in zip(z.shape, crop))
    if modality == "CT":
        levels = tuple(levels or (0.25, 0.10))
        clean = ((z + 1) / 2 * CT_SCALE + CT_OFFSET).astype(np.float32)
        peak, mask, norm = 2000.0, clean > -900, CT_PRIOR_NORMALISATION
        full = Volume(clean, np.diag([*v.spacing, 1.0]), modality="CT")
        cases = []
        for i, dose in enumerate(levels):  # noise made and measured on whole slices, sampled on the centre crop
            noisy = simulate(full, "lowdose-ct-insertion", dose=dose, seed=seed + i).data
            est = estimate_noise(Volume(noisy, full.affine, modality="CT"))
            smap = np.broadcast_to(np.asarray(est.noise_map if est.noise_map is not None else est.sigma,
                                              np.float32), noisy.shape)[sl]
            cases.append((np.ascontiguousarray(noisy[sl]), np.ascontiguousarray(smap), None, smap))
        clean, mask = clean[sl], mask[sl]
        what = (f"centre crop {list(crop)} of projection-domain low-dose CT at doses "
                + ", ".join(f"{d:.0%}" for d in levels) + " (σ map estimated on whole slices)")
    else:
        levels = tuple(levels or (0.03, 0.05))
        clean = ((z[sl] + 1) / 2).astype(np.float32)
        peak = float(clean.max())
        mask, norm = clean > 0.02 * peak, None
        cases = [(rician(clean, sigma=lev * peak, generator=seed + i), lev * peak, None, lev * peak)
                 for i, lev in enumerate(levels)]
        what = f"centre crop {list(crop)}, Rician noise at " + ", ".join(f"{lev:.0%}" for lev in levels) + \
            " of the crop maximum"
    runs: dict[float, list] = {}
    for lam in guidances:
        runs[lam] = []
        for noisy, sigma, est, sig_vox in cases:
            mean, std = posterior(noisy, sigma, spacing=v.spacing, samples=samples, steps=steps, seed=seed,
                                  guidance=lam, prior=net, likelihood="gaussian" if modality == "CT" else "rician",
                                  device=device, noise=est, normalisation=norm)
            mse = float(np.mean((mean - clean)[mask] ** 2))
            sv = np.broadcast_to(sig_vox, clean.shape)[mask]
            runs[lam].append((10 * math.log10(peak ** 2 / mse), np.abs(clean - mean)[mask], std[mask], sv))
        log(f"  validation λ={lam:g}: PSNR " + ", ".join(f"{r[0]:.2f}" for r in runs[lam]) + " dB at "
            + ", ".join(f"{lev:.0%}" for lev in levels))
    best = max(guidances, key=lambda lam: float(np.mean([r[0] for r in runs[lam]])))
    floor = fit_uncertainty_floor([(r[1], r[2], r[3]) for r in runs[best]])
    err = np.concatenate([r[1] for r in runs[best]])
    std = np.concatenate([r[2] for r in runs[best]])
    spread = np.sqrt(np.concatenate([r[2] ** 2 + floor * r[3] ** 2 for r in runs[best]]))
    ratio = err / np.maximum(std, 1e-12)
    scale = float(np.quantile(err / np.maximum(spread, 1e-12), math.erf(2 / math.sqrt(2))) / 2)
    record = {"guidance": best, "steps": steps, "samples": samples, "uncertainty_scale": round(scale, 4),
              "uncertainty_floor": round(floor, 5), "fitted_on": f"{v.name}, {what}",
              "validation_psnr_dB": {f"{lam:g}": [round(r[0], 3) for r in runs[lam]] for lam in guidances},
              "coverage_2sd_before": float(np.mean(ratio <= 2)),
              "coverage_2sd_after": float(np.mean(err <= 2 * scale * spread))}
    log(f"  sampler: guidance {best:g}, uncertainty scale {scale:.3f}, floor {floor:.4f}·σ² (±2σ coverage on validation "
        f"{record['coverage_2sd_before']:.1%} → {record['coverage_2sd_after']:.1%})")
    return record


def fit_uncertainty_floor(runs: list[tuple[np.ndarray, np.ndarray, Any]], bins: int = 10) -> float:
    """``β`` of the variance model ``err² ≈ a·(s² + β·σ²)`` from ``(|error|, raw std, σ)`` per noise level.

    Voxels of each level are binned by ``s`` (equal counts); non-negative least squares of the bins' mean squared
    error on their mean ``s²`` and ``σ²`` gives ``a`` and ``a·β``. ``β`` is the error the samples do not show, in
    units of the noise variance (0 when the spread alone explains the error)."""
    from scipy.optimize import nnls

    rows, rhs = [], []
    for err, std, sigma in runs:
        order = np.argsort(std, kind="stable")
        for idx in np.array_split(order, bins):
            if len(idx):
                sig = np.broadcast_to(np.asarray(sigma, np.float64), std.shape)  # a level or one per voxel
                rows.append([float(np.mean(std[idx] ** 2)), float(np.mean(sig[idx] ** 2))])
                rhs.append(float(np.mean(err[idx] ** 2)))
    (a, b), _ = nnls(np.asarray(rows), np.asarray(rhs))
    return float(b / a) if a > 0 else 0.0


def export_prior(net, record: dict, cfg: PriorConfig, *, sampler: dict | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Save the prior as ``cfg.export`` (safetensors + JSON card with data, licences, command and curves)."""
    from medden.models import ModelCard, save_model

    hist = record.get("history", [])
    val = ([Path(d.path).name for d in cfg.validation] if cfg.validation else
           f"{Path(cfg.data[-1].path).name}: top {int(cfg.validation_fraction * 100)} % of slices (last axis)")
    card = ModelCard(
        name=Path(cfg.export).stem, architecture=net.architecture, config=dict(net.config), modality=cfg.modality,
        normalisation=CT_PRIOR_NORMALISATION if cfg.modality == "CT" else MR_NORMALISATION, version="0.2.0",
        noise={"model": "any (prior of clean images); posterior sampling supplies the likelihood",
               "sigma_max_fraction_of_p99.9": round(net.sigma_max / 2, 4),
               "sampler": sampler or {}},
        training={"objective": "DDPM epsilon-prediction MSE on the centre slice, t = floor(t_max*u^2)",
                  "command": cfg.command,
                  "data": [{"path": Path(d.path).name, "licence": d.licence} for d in cfg.data],
                  "held_out_never_trained_on": list(cfg.held_out), "validation": val,
                  "steps": record.get("steps"), "minutes": record.get("minutes"), "batch": record.get("batch"),
                  "patch": record.get("patch"), "learning_rate": record.get("lr"), "ema": record.get("ema"),
                  "threads": record.get("threads"), "hardware": record.get("hardware", "CPU"),
                  "curves": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()} for h in hist],
                  "final_val_psnr_x0_dB": hist[-1]["val_psnr"] if hist else None})
    out = save_model(copy.deepcopy(net).cpu().eval(), card, cfg.export)
    log(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if cfg.docs_dir and hist:
        write_curves(hist, Path(cfg.docs_dir))
    return out

