"""The denoising U-Nets' training loop: resumable (only the same run, see :func:`~medden.training.engine.run_key`),
wall-time bounded, a progress line every few steps, validation PSNR each epoch, checkpoints, and export to a shipped
model (safetensors + card) with its curves — refused when the model is worse than its input on validation.

:func:`train` is the sequence of small steps below; the pieces shared with the diffusion prior's trainer (device and
DDP setup, resume, schedule, non-finite skip, progress) live in :mod:`medden.training.engine`."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medden.training.config import ConfigError, TrainConfig
from medden.training.data import CT_SCALE, PatchSampler, TrainVolume, load_volumes, synthetic_volume
from medden.training.engine import (
    Progress, TrainingError, agree, cosine_lr, keep_record, optimiser_step, parameter_digest, resume, run_dir, run_key,
    StopRequest, save_state, setup_device, start_state)
from medden.models.losses import training_loss

__all__ = ["train", "export", "validate", "run_key", "run_dir", "keep_record", "write_curves"]


def _validation_set(volumes: list[TrainVolume], cfg: TrainConfig, device: str = "cpu") -> list[tuple]:
    """Fixed noisy/clean patches (seeded) at fixed levels: MR σ = 1, 3, 5, 7, 9 % of p99.9; CT dose 25 % and 10 %.
    Every validation volume is a reference here (noise is added to it), at its native voxel size."""
    import dataclasses

    volumes = [dataclasses.replace(v, role="clean") for v in volumes]
    sampler = PatchSampler(volumes, cfg.model_copy(update={"augment": False, "intensity_scale": (1.0, 1.0),
                                                           "resample": None,
                                                           "noise": cfg.noise.model_copy(update={"level_jitter": 0})}),
                           seed=12345, device=device)
    out = []
    for i in range(cfg.val_patches):
        if cfg.mode == "n2v":  # against an independent target: x = y + σz, target y − σz (R2R with α = 1)
            x, y, level, _ = sampler.sample(1)
            z = sampler._randn(y.shape) * level.view(-1, 1, 1, 1, 1)
            out.append((y + z, y - z, level * math.sqrt(2), None))
            continue
        if cfg.mode == "supervised":
            if cfg.modality == "MR":
                s = (0.01, 0.03, 0.05, 0.07, 0.09)[i % 5]
                sampler.cfg.noise.sigma_range = (s, s)
            else:
                d = (0.25, 0.1)[i % 2]
                sampler.cfg.noise.dose_range = (d, d)
        out.append(sampler.sample(1))
    return out


class _PatchStream(torch.utils.data.IterableDataset):
    """An endless stream of batches from a :class:`PatchSampler`; each loader worker reseeds its own copy."""

    def __init__(self, sampler: PatchSampler, seed: int) -> None:
        super().__init__()
        self.sampler, self.seed = sampler, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            torch.set_num_threads(1)
            self.sampler.reseed(self.seed * 1009 + info.id)
        while True:
            yield self.sampler.sample()


def _batches(sampler: PatchSampler, cfg: TrainConfig, seed: int, device: str):
    """Training batches: drawn in this process, or by ``cfg.workers`` loader processes (seeded, so resumable runs
    differ from their first segment but stay reproducible)."""
    if cfg.workers == 0 or sampler.device != "cpu":
        sampler.reseed(seed)
        while True:
            yield sampler.sample()
    loader = torch.utils.data.DataLoader(_PatchStream(sampler, seed), batch_size=None, num_workers=cfg.workers,
                                         pin_memory=device.startswith("cuda"), prefetch_factor=4,
                                         persistent_workers=True)
    yield from loader


def _psnr(est: torch.Tensor, ref: torch.Tensor, data_range: float) -> float:
    mse = float(torch.mean((est.float() - ref.float()) ** 2))
    return 10 * math.log10(data_range ** 2 / max(mse, 1e-20))


def validate(net, val: list[tuple], cfg: TrainConfig, device: str) -> dict[str, float]:
    """Mean PSNR of the noisy input and of the network output on the validation patches (data range: 1 for MR in
    p99.9 units, 2000 HU for CT) — for self-supervised modes against an independently noisy target, the same for
    both, so the comparison stays fair — and the loss."""
    net.eval()
    rng = 1.0 if cfg.modality == "MR" else 2000.0 / CT_SCALE
    p_in, p_out, losses = [], [], []
    with torch.no_grad():
        for x, y, level, mask in val:
            x, y, level = x.to(device), y.to(device), level.to(device)
            est = net(x, level)
            p_in.append(_psnr(x, y, rng))
            p_out.append(_psnr(est, y, rng))
            losses.append(float(training_loss(est, y, level, None if mask is None else mask.to(device), cfg.loss)))
    net.train()
    return {"val_psnr_noisy": float(np.mean(p_in)), "val_psnr": float(np.mean(p_out)), "val_loss": float(np.mean(losses))}


def _initial_network(cfg: TrainConfig, log: Callable[[str], None]):
    """A fresh network, or ``cfg.init_weights``: as they are when ``cfg.network`` is empty or the same, widened
    (function-preserving, :func:`~medden.models.networks.widen_unet`) when ``cfg.network`` asks for a wider U-Net."""
    from medden.models import build_network, load_model
    from medden.models.networks import widen_unet

    if not cfg.init_weights:
        return build_network(cfg.architecture, **cfg.network)
    net, _ = load_model(cfg.init_weights, device="cpu", expect_architecture=cfg.architecture)
    want = {**net.config, **cfg.network}
    if want != net.config:
        if cfg.architecture != "conditioned-unet3d" or want.get("bias") != net.config.get("bias"):
            raise ConfigError(f"init_weights {cfg.init_weights} hold {net.config}, the config asks for {want}")
        net = widen_unet(build_network(cfg.architecture, **want), net.state_dict(), net.config["features"])
        log(f"initialised from {cfg.init_weights}, widened to features {want['features']}")
    else:
        log(f"initialised from {cfg.init_weights}")
    return net


def _data(cfg: TrainConfig, folder: Path, rank: int, device: str, log: Callable[[str], None]):
    """The patch sampler (volumes resident on ``device`` when it is a GPU) and the fixed validation patches."""
    log(f"loading {len(cfg.data)} training and {len(cfg.validation)} validation volumes")
    volumes = load_volumes(cfg.data, cfg, folder / "cache", log)
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.synthetic_volumes):
        volumes.append(TrainVolume(f"synthetic-{i}", synthetic_volume(rng)))
    val_volumes = load_volumes(cfg.validation, cfg, folder / "cache", log) if cfg.validation else volumes
    val = _validation_set(val_volumes, cfg, device)
    # each rank draws its own patches; on a GPU the volumes stay resident there and patches and noise are made there
    on_device = device.startswith("cuda") or cfg.workers == 0
    if device.startswith("cuda") and cfg.workers:
        log(f"volumes resident on {device}: patches are made there, the {cfg.workers} loader workers are not used")
    return PatchSampler(volumes, cfg, seed=cfg.seed + 1000 * rank, device=device if on_device else "cpu"), val


def _wrap(net, world: int, device: str, log: Callable[[str], None]):
    """``net`` itself, or under ``torchrun`` wrapped in DistributedDataParallel."""
    if world == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    log(f"DistributedDataParallel over {world} processes ({'NCCL' if device.startswith('cuda') else 'gloo'})")
    return DistributedDataParallel(net, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)


def _loss(model, batch, cfg: TrainConfig, device: str, amp_dtype) -> torch.Tensor:
    """The training loss of one batch, the network under autocast (bf16 on a GPU)."""
    x, y, level, mask = batch
    x, y, level = x.to(device, non_blocking=True), y.to(device, non_blocking=True), level.to(device)
    mask = None if mask is None else mask.to(device)
    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                        dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        est = model(x, level)
    return training_loss(est.float(), y, level, mask, cfg.loss, lowpass_weight=cfg.lowpass_weight)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the model described by ``cfg``; returns the final record (and exports when ``cfg.export``).

    The run's folder is ``<checkpoint_dir>/<name>-<run key>``: the same config and data resume from its
    ``last.pt`` (step, optimiser state and elapsed wall time), anything else starts a new run in its own folder.
    Training stops after ``epochs`` or when the wall budget is spent; the learning rate follows a cosine over
    whichever comes first. Before export the model is validated against its input: worse → :class:`TrainingError`
    (``on_worse="refuse"``, nothing exported) or a loud warning (``"warn"``).
    """
    from medden.inference import autocast_dtype

    rank, world, device = setup_device(cfg.device, cfg.threads)
    if rank != 0:  # one voice: rank 0 logs, checkpoints and exports
        log = lambda _msg: None  # noqa: E731
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    key = run_key(cfg)
    folder = run_dir(cfg, key)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (folder / "config.json").write_text(cfg.model_dump_json(indent=2))
    sampler, val = _data(cfg, folder, rank, device, log)
    net = _initial_network(cfg, log).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    amp_dtype = autocast_dtype(device, "auto") if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, elapsed, history = 0, 0.0, []
    last = folder / "last.pt"
    state = resume(last, key, device, log)
    if state is not None and (state.get("architecture") != cfg.architecture or state.get("network") != net.config):
        log(f"ignoring {last}: it holds another architecture")
        state = None
    if state is None and cfg.resume_from:
        state, same = start_state(cfg.resume_from, key, log)
        if state.get("network") != net.config:
            raise ConfigError(f"resume_from {cfg.resume_from} holds {state.get('network')}, the config asks for "
                              f"{net.config}")
        if not same:
            net.load_state_dict(state["model"])
            state = None
    if state is not None:
        net.load_state_dict(state["model"])
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
    else:
        log(f"new run {key}: checkpoints in {folder} (another config or other data is another run)")
    model = _wrap(net, world, device, log)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    budget = cfg.wall_minutes * 60 if cfg.wall_minutes else float("inf")
    voxels = cfg.batch_size * int(np.prod(cfg.patch_size))
    log(f"training {cfg.architecture} {net.config} on {device}"
        f"{' with ' + str(amp_dtype).split('.')[-1] + ' autocast' if amp_dtype else ''}: "
        f"{total_steps} steps of {cfg.batch_size}×{cfg.patch_size}, wall budget {cfg.wall_minutes or '∞'} min")

    def save() -> None:
        if rank == 0:
            save_state(last, {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                              "elapsed": elapsed, "history": history, "architecture": cfg.architecture,
                              "network": net.config, "run_key": key, "config": cfg.model_dump(mode="json")})

    batches = _batches(sampler, cfg, cfg.seed + 1000 * rank + step, device)
    progress = Progress(cfg.progress_every, voxels, log)
    start, run_losses, skipped = time.perf_counter() - elapsed, [], 0
    with StopRequest(log) as stop:
        while not agree(step >= total_steps or elapsed >= budget or stop.requested, world):
            lr = cosine_lr(opt, cfg.learning_rate,
                           max(step / total_steps, elapsed / budget if math.isfinite(budget) else 0.0))
            loss = _loss(model, next(batches), cfg, device, amp_dtype)
            if optimiser_step(loss, net, opt, scaler):
                run_losses.append(float(loss.detach()))
            else:
                skipped += 1
                log(f"step {step}: non-finite gradient, update skipped ({skipped} so far)")
            step += 1
            elapsed = time.perf_counter() - start
            progress.update(step, run_losses[-1] if run_losses else None, lr)
            end = step >= total_steps or elapsed >= budget or stop.requested
            if rank == 0 and (step % cfg.steps_per_epoch == 0 or end):
                rec = {"step": step, "epoch": step / cfg.steps_per_epoch, "minutes": round(elapsed / 60, 2),
                       "lr": lr, "train_loss": float(np.mean(run_losses)) if run_losses else float("nan"),
                       **validate(net, val, cfg, device), **progress.last}
                run_losses = []
                keep_record(rec, history, save, folder)
                log(f"epoch {rec['epoch']:.0f} step {step} {rec['minutes']:.1f} min loss {rec['train_loss']:.4f} "
                    f"val PSNR {rec['val_psnr']:.2f} dB (noisy {rec['val_psnr_noisy']:.2f})")
    record = {"steps": step, "minutes": round(elapsed / 60, 1), "history": history, "world_size": world,
              "skipped_steps": skipped, "run_key": key, "run_dir": str(folder)}
    _finish(net, cfg, record, val, device, rank, world, folder, log)
    return record


def _finish(net, cfg: TrainConfig, record: dict, val, device: str, rank: int, world: int, folder: Path,
            log: Callable[[str], None]) -> None:
    """Digests of every rank's weights (DDP), the validation gate, export, and the process group's end."""
    if world > 1:
        import torch.distributed as dist

        # every rank records the digest of its weights: DDP keeps them identical (the multi-process test checks it)
        (folder / f"rank{rank}.sha256").write_text(parameter_digest(net) + "\n")
        dist.barrier()
    try:
        if cfg.export and rank == 0:
            final = validate(net, val, cfg, device)
            record["validation"] = final
            gain = final["val_psnr"] - final["val_psnr_noisy"]
            log(f"validation: output {final['val_psnr']:.2f} dB vs noisy input {final['val_psnr_noisy']:.2f} dB "
                f"({gain:+.2f} dB)")
            if gain < 0:
                msg = (f"the trained model is WORSE than its input on validation ({final['val_psnr']:.2f} dB vs "
                       f"{final['val_psnr_noisy']:.2f} dB)")
                if cfg.on_worse == "refuse":
                    raise TrainingError(f"{msg}: not exported (train longer, or set on_worse='warn'); the "
                                        f"checkpoint stays in {folder}")
                log(f"WARNING: {msg}; exporting anyway (on_worse='warn')")
            record["export"] = str(export(net, cfg, record, log))
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def export(net, cfg: TrainConfig, record: dict, log: Callable[[str], None] = print) -> Path:
    """Save the network as ``cfg.export`` (safetensors + card) and its curves into ``cfg.docs_dir``."""
    from medden.models import ModelCard, save_model
    from medden.models.card import CT_NORMALISATION, MR_NORMALISATION

    norm = MR_NORMALISATION if cfg.modality == "MR" else CT_NORMALISATION  # what training used (medden.training.data)
    noise = ({"model": cfg.noise.model, "coils": cfg.noise.coils, "sigma_range_fraction_of_p99.9": cfg.noise.sigma_range}
             if cfg.modality == "MR" else {"model": "lowdose-ct-insertion (projection domain)",
                                            "dose_range": cfg.noise.dose_range})
    hist = record.get("history", [])
    card = ModelCard(name=cfg.name, architecture=cfg.architecture, config=dict(net.config), modality=cfg.modality,
                     normalisation=norm, noise=noise,
                     training={"mode": cfg.mode, "command": cfg.command,
                               "data": [{"path": Path(d.path).name, "licence": d.licence, "target": d.target,
                                         "downsample": d.downsample, "slices": d.slices,
                                         **({"piecewise_smooth_mm": d.piecewise_smooth_mm}
                                            if d.piecewise_smooth_mm else {})} for d in cfg.data],
                               "noisy_targets": "Recorrupted-to-Recorrupted (Pang et al., CVPR 2021) with the "
                                                "estimated noise level" if any(d.target == "noisy" for d in cfg.data)
                                                else None,
                               "resample": cfg.resample.model_dump() if cfg.resample else None,
                               "validation": [{"path": Path(d.path).name, "licence": d.licence} for d in cfg.validation],
                               "synthetic_volumes": cfg.synthetic_volumes, "steps": record.get("steps"),
                               "init_weights": Path(cfg.init_weights).name if cfg.init_weights else None,
                               "minutes": record.get("minutes"), "batch": cfg.batch_size,
                               "patch_size": list(cfg.patch_size), "loss": f"{cfg.loss} / sigma^2",
                               "lowpass_weight": cfg.lowpass_weight,
                               "final_val_psnr": hist[-1]["val_psnr"] if hist else None})
    path = save_model(net.cpu().eval(), card, cfg.export)
    log(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if cfg.docs_dir and hist:
        write_curves(hist, Path(cfg.docs_dir))
    return path


def write_curves(history: list[dict], folder: Path) -> None:
    """``curves.csv`` and ``curves.png`` (training loss and validation PSNR per epoch)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(str(h[k]) for k in keys) for h in history]
    (folder / "curves.csv").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [h["epoch"] for h in history]
    ax[0].plot(ep, [h["train_loss"] for h in history])
    ax[0].set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax[1].plot(ep, [h["val_psnr"] for h in history], label="network")
    ax[1].plot(ep, [h["val_psnr_noisy"] for h in history], "--", label="noisy input")
    ax[1].set(xlabel="epoch", ylabel="validation PSNR (dB)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=90)
    plt.close(fig)
