"""The pieces every medden trainer shares (the denoising U-Nets of :mod:`~medden.training.loop` and the diffusion
prior of :mod:`~medden.training.diffusion`), each small and testable on its own:

* :func:`run_key` / :func:`run_dir` — a run's folder is named by the hash of its config and the content of its data,
  so only the same run resumes from it (:func:`resume`, :func:`save_state`);
* :func:`setup_device` — device, threads, ``torchrun`` process group;
* :func:`cosine_lr` — the learning-rate schedule over steps or wall time, whichever ends first;
* :func:`optimiser_step` — clipping, and skipping a step whose gradient is not finite;
* :class:`Progress` — a line every N steps with the loss and the speed;
* :func:`keep_record` — validation records into the checkpoint and ``log.jsonl``.

The engine is our own loop rather than MONAI's ``SupervisedTrainer`` (Ignite) or Lightning: the data are resident
on the device and drawn by a sampler in the training process (no ``DataLoader``), resume is tied to the run key,
and the two trainers need only these few functions; Lightning would add a dependency for the same.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from medden.conventions import sha256_file
from medden.errors import MeddenError

#: config fields that steer a run without changing what it trains: a run resumed with other values is the same run
RUN_CONTROL = ("epochs", "max_steps", "wall_minutes", "val_patches", "device", "threads", "workers", "amp",
               "checkpoint_dir", "export", "docs_dir", "command", "progress_every", "on_worse", "log_every",
               "resume_from")


class TrainingError(MeddenError, RuntimeError):
    """Training cannot go on or its result must not be used (e.g. the model is worse than its input)."""


def default_checkpoint_root() -> Path:
    """``$XDG_CACHE_HOME/medden/training``, by default ``~/.cache/medden/training``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "medden" / "training"


def run_key(cfg) -> str:
    """A 12-hex-digit key of what a run trains: the config (less :data:`RUN_CONTROL` and the validation volumes,
    which only watch) with every data file and the initial weights by content (sha256) instead of by path, so the
    same data under another root is the same run and other data under the same names is another."""
    raw = cfg.model_dump(mode="json", exclude=(set(RUN_CONTROL) | {"validation"}) & set(type(cfg).model_fields))

    def content(spec: dict) -> dict:
        return {**spec, "path": sha256_file(spec["path"]),
                "pair": sha256_file(spec["pair"]) if spec.get("pair") else None}

    raw["data"] = [content(d) for d in raw["data"]]
    if raw.get("init_weights"):
        raw["init_weights"] = sha256_file(raw["init_weights"])
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cfg, key: str | None = None) -> Path:
    """The run's own folder, ``<checkpoint_dir>/<name>-<key>``: only the same run resumes from it."""
    root = Path(cfg.checkpoint_dir).expanduser() if cfg.checkpoint_dir else default_checkpoint_root()
    return root / f"{cfg.name}-{key or run_key(cfg)}"


def setup_device(device: str, threads: int | None) -> tuple[int, int, str]:
    """Resolve ``device`` (``auto``: CUDA when present), set the CPU threads, and under ``torchrun``
    (``WORLD_SIZE`` > 1) join the process group — NCCL on GPUs, gloo on CPUs. Returns ``(rank, world, device)``."""
    from medden.inference import resolve_device

    device = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
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


def agree(stop: bool, world: int) -> bool:
    """Every rank stops at the same step (rank 0's wall clock decides), or DDP's all-reduce would hang."""
    if world == 1:
        return stop
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop else 0.0])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def cosine_lr(opt: torch.optim.Optimizer, base: float, frac: float, floor: float = 0.02) -> float:
    """Set the learning rate to ``base·(floor + (1 − floor)·½(1 + cos πf))`` at progress ``frac`` ∈ [0, 1]."""
    lr = base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0))))
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def optimiser_step(loss: torch.Tensor, net: torch.nn.Module, opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None, clip: float = 1.0) -> bool:
    """Backward, clip to ``clip``, step. A non-finite gradient (an overflow of a reduced-precision kernel) would
    turn every weight into NaN: that update is skipped (returns False) and the scaler still learns of it. Under DDP
    the gradients are all-reduced, so every rank sees the same norm and skips alike without a further collective."""
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    ok = bool(torch.isfinite(norm))
    if ok:
        (scaler.step(opt) if scaler is not None else opt.step())
    if scaler is not None:
        scaler.update()
    return ok


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training state atomically (temporary file, then rename)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def resume(path: Path, key: str, device: str, log: Callable[[str], None]) -> dict | None:
    """The state saved at ``path`` when it belongs to run ``key`` (said on the terminal), else None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("run_key", key) != key:
        log(f"not resuming {path}: it belongs to run {state.get('run_key')}, this is run {key}")
        return None
    log(f"resumed run {key} (same config and data) from {path} at step {state['step']} "
        f"({state['elapsed'] / 60:.1f} min trained)")
    return state


def compact_state(src: str | Path, dest: str | Path, data_root: str | Path | None = None) -> Path:
    """A training state small enough to commit (the network, step, elapsed time, history, run key and config;
    without the optimiser's moments, which a resumed run re-estimates within a few steps), written atomically.

    The config's data paths under ``data_root`` (default ``$MEDDEN_DATA``) are written relative to it, the root in
    its command as ``DATA``, and its checkpoint folder (that machine's cache) is left out: a committed state names no
    folder of the machine that trained it."""
    from medden.training.config import data_root as default_root

    src, dest = Path(src), Path(dest)
    state = torch.load(src, map_location="cpu", weights_only=True)
    keep = {k: v for k, v in state.items() if k not in ("optimizer",)}
    keep["model"] = {k: v.contiguous() for k, v in state["model"].items()}
    root = data_root or default_root()
    if isinstance(keep.get("config"), dict):
        keep["config"] = {**keep["config"], "checkpoint_dir": None}
        if root:
            keep["config"] = _relative_to_root(keep["config"], Path(root))
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_state(dest, keep)
    return dest


def _relative_to_root(config: dict, root: Path) -> dict:
    """``config`` with the data and validation paths under ``root`` relative to it and ``root`` in its command
    replaced by ``DATA``."""
    absolute = root.expanduser().resolve()

    def rel(spec: dict) -> dict:
        out = dict(spec)
        for key in ("path", "pair"):
            path = Path(out[key]).expanduser().resolve() if isinstance(out.get(key), str) else None
            if path is not None and path.is_relative_to(absolute):
                out[key] = str(path.relative_to(absolute))
        return out

    config = {**config, **{k: [rel(d) for d in config[k]] for k in ("data", "validation") if k in config}}
    if isinstance(config.get("command"), str):
        config["command"] = config["command"].replace(str(root), "DATA").replace(str(absolute), "DATA")
    return config


def start_state(path: str | Path, key: str, log: Callable[[str], None]) -> tuple[dict, bool]:
    """A committed training state (:func:`compact_state`) to start from: ``(state, same_run)``. The same run
    continues at its step; another run takes only its weights."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    same = state.get("run_key") == key
    log(f"resuming run {key} from the training state {path} at step {state['step']}" if same else
        f"initialising from the weights of the training state {path} (run {state.get('run_key')}; this is run "
        f"{key}: step and optimiser start afresh)")
    return state, same


class StopRequest:
    """SIGTERM/SIGINT while training: finish the current step, save, validate and export, then stop — instead of
    dying between checkpoints (``kill PID`` stops a background run cleanly). A no-op outside the main thread."""

    def __init__(self, log: Callable[[str], None]) -> None:
        import signal
        import threading

        self.requested, self.log, self.old = False, log, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.log("stop requested: finishing this step, then saving and exporting")

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class Progress:
    """A line every ``every`` steps: step, mean loss since the last line, learning rate, steps/s and voxels/s."""

    def __init__(self, every: int, voxels_per_step: int, log: Callable[[str], None]) -> None:
        self.every, self.voxels, self.log = max(1, int(every)), voxels_per_step, log
        self.t, self.losses, self.last = time.perf_counter(), [], {}

    def update(self, step: int, loss: float | None, lr: float) -> None:
        if loss is not None:
            self.losses.append(loss)
        if step % self.every:
            return
        now = time.perf_counter()
        rate = self.every / max(now - self.t, 1e-9)
        mean = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        self.last = {"steps_per_s": rate, "voxels_per_s": rate * self.voxels}
        self.log(f"step {step} loss {mean:.4f} lr {lr:.2e} {rate:.3f} steps/s {rate * self.voxels / 1e6:.2f} Mvoxel/s")
        self.t, self.losses = now, []


def keep_record(rec: dict, history: list[dict], save: Callable[[], None], folder: Path) -> None:
    """One validation record: into ``history``, then the checkpoint (``save``, which stores the history), then a line
    of ``folder/log.jsonl`` — the order that keeps the log no ahead of the checkpoint."""
    history.append(rec)
    save()
    with open(folder / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def parameter_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for tensor in net.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
