"""The training loop: resumable, wall-time bounded, validation PSNR each epoch, checkpoints, export to a shipped
model (safetensors + card) with its curves."""
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
from medden.training.losses import training_loss


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
    mse = float(torch.mean((est - ref) ** 2))
    return 10 * math.log10(data_range ** 2 / max(mse, 1e-20))


def validate(net, val: list[tuple], cfg: TrainConfig, device: str) -> dict[str, float]:
    """Mean PSNR of the noisy input and of the network output on the validation patches (data range: 1 for MR in
    p99.9 units, 2000 HU for CT) — for self-supervised modes against the held-out noisy target — and the loss."""
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


def keep_record(rec: dict, history: list[dict], save: Callable[[], None], folder: Path) -> None:
    """One validation record: into ``history``, then the checkpoint (``save``, which stores the history), then a line
    of ``folder/log.jsonl`` — the order that keeps the log no ahead of the checkpoint."""
    history.append(rec)
    save()
    with open(folder / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def _init_distributed(device: str) -> tuple[int, int, str]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group — NCCL on GPUs, gloo on CPUs — and return
    ``(rank, world_size, device)``; otherwise ``(0, 1, device)``."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _agree(stop: bool, world: int) -> bool:
    """Every rank stops at the same step (rank 0's wall clock decides), or DDP's all-reduce would hang."""
    if world == 1:
        return stop
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop else 0.0])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


#: config fields that steer a run without changing what it trains: a run resumed with other values is the same run
RUN_CONTROL = ("epochs", "wall_minutes", "val_patches", "device", "threads", "workers", "amp", "checkpoint_dir",
               "export", "docs_dir", "command")


def default_checkpoint_root() -> Path:
    """``$XDG_CACHE_HOME/medden/training``, by default ``~/.cache/medden/training``."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "medden" / "training"


def _file_digest(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_key(cfg: TrainConfig) -> str:
    """A 12-hex-digit key of what a run trains: the config (less :data:`RUN_CONTROL`) with every data file and the
    initial weights by content (sha256) instead of by path, so the same data under another root is the same run
    and other data under the same names is another."""
    import hashlib

    raw = cfg.model_dump(mode="json", exclude=set(RUN_CONTROL))

    def content(spec: dict) -> dict:
        return {**spec, "path": _file_digest(spec["path"]),
                "pair": _file_digest(spec["pair"]) if spec.get("pair") else None}

    raw["data"] = [content(d) for d in raw["data"]]
    raw["validation"] = [content(d) for d in raw["validation"]]
    if raw.get("init_weights"):
        raw["init_weights"] = _file_digest(raw["init_weights"])
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cfg: TrainConfig, key: str | None = None) -> Path:
    """The run's own folder, ``<checkpoint_dir>/<name>-<key>``: only the same run resumes from it."""
    root = Path(cfg.checkpoint_dir).expanduser() if cfg.checkpoint_dir else default_checkpoint_root()
    return root / f"{cfg.name}-{key or run_key(cfg)}"


def _parameter_digest(net) -> str:
    import hashlib

    h = hashlib.sha256()
    for tensor in net.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
        wide = build_network(cfg.architecture, **want)
        net = widen_unet(wide, net.state_dict(), net.config["features"])
        log(f"initialised from {cfg.init_weights}, widened to features {want['features']}")
    else:
        log(f"initialised from {cfg.init_weights}")
    return net


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the model described by ``cfg``; returns the final record (and exports when ``cfg.export``).

    Resuming: when ``checkpoint_dir/last.pt`` exists for the same architecture, training continues from its step,
    optimiser state and elapsed wall time. Training stops after ``epochs`` or when the wall budget is spent; the
    learning rate follows a cosine over whichever of the two comes first.
    """
    from medden.inference import autocast_dtype, resolve_device
    from medden.models import build_network, load_model

    device = resolve_device(cfg.device)
    rank, world, device = _init_distributed(device)
    if rank != 0:  # one voice: rank 0 logs, checkpoints and exports
        log = lambda _msg: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    key = run_key(cfg)
    ckpt_dir = run_dir(cfg, key)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (ckpt_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    log(f"loading {len(cfg.data)} training and {len(cfg.validation)} validation volumes")
    volumes = load_volumes(cfg.data, cfg, ckpt_dir / "cache", log)
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.synthetic_volumes):
        volumes.append(TrainVolume(f"synthetic-{i}", synthetic_volume(rng)))
    val_volumes = load_volumes(cfg.validation, cfg, ckpt_dir / "cache", log) if cfg.validation else volumes
    val = _validation_set(val_volumes, cfg, device)
    # each rank draws its own patches; on a GPU the volumes stay resident there and patches and noise are made there
    sampler = PatchSampler(volumes, cfg, seed=cfg.seed + 1000 * rank,
                           device=device if device.startswith("cuda") or cfg.workers == 0 else "cpu")

    net = _initial_network(cfg, log)
    net = net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    amp_dtype = autocast_dtype(device, "auto") if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, elapsed, history = 0, 0.0, []
    last = ckpt_dir / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location=device, weights_only=True)
        if state.get("architecture") == cfg.architecture and state.get("network") == net.config:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, elapsed, history = state["step"], state["elapsed"], state["history"]
            log(f"resumed run {key} (same config and data) from {last} at step {step} "
                f"({elapsed / 60:.1f} min trained)")
        else:
            log(f"ignoring {last}: it holds another architecture")
    else:
        log(f"new run {key}: checkpoints in {ckpt_dir} (another config or other data is another run)")
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[torch.cuda.current_device()] if device.startswith("cuda")
                                        else None)
        log(f"DistributedDataParallel over {world} processes ({'NCCL' if device.startswith('cuda') else 'gloo'})")
    total_steps = cfg.epochs * cfg.steps_per_epoch
    budget = cfg.wall_minutes * 60 if cfg.wall_minutes else float("inf")
    log(f"training {cfg.architecture} {net.config} on {device}"
        f"{' with ' + str(amp_dtype).split('.')[-1] + ' autocast' if amp_dtype else ''}: "
        f"{total_steps} steps of {cfg.batch_size}×{cfg.patch_size}, wall budget {cfg.wall_minutes or '∞'} min")

    def save() -> None:
        if rank != 0:
            return
        tmp = last.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "history": history, "architecture": cfg.architecture, "network": net.config}, tmp)
        tmp.replace(last)

    batches = _batches(sampler, cfg, cfg.seed + 1000 * rank + step, device)
    start, run_losses, skipped = time.perf_counter() - elapsed, [], 0
    while not _agree(step >= total_steps or elapsed >= budget, world):
        frac = max(step / total_steps, elapsed / budget if math.isfinite(budget) else 0.0)
        for g in opt.param_groups:
            g["lr"] = cfg.learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        x, y, level, mask = next(batches)
        x, y, level = x.to(device, non_blocking=True), y.to(device, non_blocking=True), level.to(device)
        mask = None if mask is None else mask.to(device)
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                            dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            est = model(x, level)
        loss = training_loss(est.float(), y, level, mask, cfg.loss, lowpass_weight=cfg.lowpass_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if not bool(torch.isfinite(norm)):
            # a non-finite gradient (an overflow of a reduced-precision kernel) would turn every weight into NaN:
            # this step is skipped, counted and logged instead; the scaler still learns of it. DDP has all-reduced
            # the gradients, so every rank sees the same norm and skips the same step without a further collective
            skipped += 1
            log(f"step {step}: non-finite gradient, update skipped ({skipped} so far)")
        else:
            scaler.step(opt)
            run_losses.append(float(loss.detach()))
        scaler.update()
        step += 1
        elapsed = time.perf_counter() - start
        if rank == 0 and (step % cfg.steps_per_epoch == 0 or step >= total_steps or elapsed >= budget):
            rec = {"step": step, "epoch": step / cfg.steps_per_epoch, "minutes": round(elapsed / 60, 2),
                   "lr": opt.param_groups[0]["lr"],
                   "train_loss": float(np.mean(run_losses)) if run_losses else float("nan"),
                   **validate(net, val, cfg, device)}
            run_losses = []
            keep_record(rec, history, save, ckpt_dir)
            log(f"epoch {rec['epoch']:.0f} step {step} {rec['minutes']:.1f} min loss {rec['train_loss']:.4f} "
                f"val PSNR {rec['val_psnr']:.2f} dB (noisy {rec['val_psnr_noisy']:.2f})")
    record = {"steps": step, "minutes": round(elapsed / 60, 1), "history": history, "world_size": world,
              "skipped_steps": skipped, "run_key": key, "run_dir": str(ckpt_dir)}
    if world > 1:
        import torch.distributed as dist

        # every rank records the digest of its weights: DDP keeps them identical (the multi-process test checks it)
        (ckpt_dir / f"rank{rank}.sha256").write_text(_parameter_digest(net) + "\n")
        dist.barrier()
    if cfg.export and rank == 0:
        record["export"] = str(export(net, cfg, record, log))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return record


def export(net, cfg: TrainConfig, record: dict, log: Callable[[str], None] = print) -> Path:
    """Save the network as ``cfg.export`` (safetensors + card) and its curves into ``cfg.docs_dir``."""
    from medden.models import ModelCard, Normalisation, save_model

    norm = (Normalisation("percentile", 99.9) if cfg.modality == "MR"
            else Normalisation("fixed", offset=0.0, scale=CT_SCALE))
    noise = ({"model": cfg.noise.model, "coils": cfg.noise.coils, "sigma_range_fraction_of_p99.9": cfg.noise.sigma_range}
             if cfg.modality == "MR" else {"model": "lowdose-ct-insertion (projection domain)",
                                            "dose_range": cfg.noise.dose_range})
    hist = record.get("history", [])
    card = ModelCard(name=cfg.name, architecture=cfg.architecture, config=dict(net.config), modality=cfg.modality,
                     normalisation=norm, noise=noise,
                     training={"mode": cfg.mode, "command": cfg.command,
                               "data": [{"path": Path(d.path).name, "licence": d.licence, "downsample": d.downsample,
                                         "slices": d.slices} for d in cfg.data],
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
