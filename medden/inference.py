"""Where and how networks and GPU-capable denoisers run: device choice (CUDA when present, CPU always)."""
from __future__ import annotations

import functools

from medden.errors import ParameterError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    """``'auto'`` → ``'cuda'`` when a CUDA device is usable, else ``'cpu'``; ``'cuda'`` without one is an error."""
    import torch

    device = (device or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ParameterError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return device


# -- networks on volumes: sliding window, memory budget, autocast ------------------------------------------------------

#: Bytes of working memory per window voxel for a network call (activations of the 16-feature conditioned U-Net in
#: inference: 313–381 measured on CPU for 96³–192×192×128 windows in channels-last layout, with headroom); scales the
#: window to the free memory.
BYTES_PER_WINDOW_VOXEL = 450
#: Cap of the memory a CPU run may use for windows, whatever is free (the target is < 4 GB in all for a 512×512×300 CT).
CPU_WINDOW_BUDGET = 1.5e9
#: Largest window on a CPU, in voxels. In the channels-last layout (oneDNN's fast path for 3D convolutions) the
#: shipped U-Net runs at 0.78 M voxels/s on 96³ windows and 1.5 M on 128³–192×192×128 (2 AVX2 cores, fp32; in the
#: default layout 0.59 M and 0.82 M); 0.80–0.90 M voxels per CPU-second for any shape of ≥ 2 M voxels. 128³ worth
#: (≈ 0.7 GB of activations) keeps a 512×512×300 CT under 4 GB at the same work as larger windows.
CPU_MAX_WINDOW_VOXELS = 128 ** 3
#: Largest window on a GPU, in voxels (within half the free memory).
GPU_MAX_WINDOW_VOXELS = 192 ** 3
#: Bytes of slab buffers (input, output, blending weights, padding) a CPU run may hold at once along the last axis.
CPU_SLAB_BUDGET = 1.1e9


@functools.cache
def keep_freed_buffers() -> None:
    """Let this process reuse the memory of freed large buffers instead of returning it to the system each time.

    glibc serves allocations above its mmap threshold (≥ 128 kB, adapting up to 32 MB) with fresh pages and unmaps
    them on free, so every sliding window's activations fault in again: on a 512×512×300 CT that was ~24 M page
    faults and a third of the CPU time in the kernel. Raising the threshold to 1 GB and the trim threshold to 2 GB
    (``mallopt``) keeps them in the heap: 0.73 → 0.02 s of system time per 128³ window, 15 % less wall time, about
    150 MB more peak memory. Runs once (cached), for CPU runs; a no-op where the C library is not glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):  # not glibc (musl, …): leave the allocator as it is
        pass


def free_memory(device: str) -> int:
    """Bytes free on ``device`` (CUDA: ``mem_get_info``; CPU: available system memory)."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with MONAI's dependencies on our machines
        return int(4e9)


def windows_along(n: int, side: int, overlap: float) -> int:
    """How many windows of ``side`` voxels MONAI's sliding window places along an axis of ``n`` voxels."""
    if side >= n:
        return 1
    step = max(1, int(side * (1 - overlap)))
    return -(-(n - side) // step) + 1


def choose_window(shape: tuple[int, ...], device: str, multiple: int = 16, max_side: int | None = None,
                  overlap: float = 0.125) -> tuple[tuple[int, int, int], int]:
    """A sliding-window size (multiples of ``multiple``) and batch size that fit the free memory of ``device``, for
    the whole ``shape`` in one piece (:func:`plan_windows` without slabs)."""
    roi, _, batch = plan_windows(shape, device, multiple, max_side=max_side, overlap=overlap)
    return roi, batch


def plan_windows(shape: tuple[int, ...], device: str, multiple: int = 16, max_side: int | None = None,
                 overlap: float = 0.125, max_slices: int | None = None) -> tuple[tuple[int, int, int], int, int]:
    """The window size, slab thickness along the last axis and batch size that make the network process the fewest
    voxels over the whole ``shape`` (windows × window size, overlaps and slab margins included; ties go to fewer
    windows): ``(roi, slab, batch)``.

    Windows: multiples of ``multiple`` (and 16), no thinner than 64 voxels where the axis is longer (their borders
    would rule), at most :data:`CPU_MAX_WINDOW_VOXELS` on a CPU within :data:`CPU_WINDOW_BUDGET`, at most
    :data:`GPU_MAX_WINDOW_VOXELS` within half the free memory on a GPU. Slabs: with ``max_slices`` (the most slices
    whose buffers fit), the last axis is cut into equal slabs, each read with a margin of a quarter window on both
    sides, so that a slab with its margins holds at most ``max_slices``; slab and window are chosen together (slabs
    of 100 + 2 × 24 slices under 96-slice windows had made a 512×512×300 CT cost 2.2× its voxels). Batches of up to
    8 windows on a GPU, one on a CPU.
    """
    gpu = device.startswith("cuda")
    budget = 0.5 * free_memory(device) if gpu else min(CPU_WINDOW_BUDGET, 0.4 * free_memory(device))
    cap = int(min(budget // BYTES_PER_WINDOW_VOXEL, GPU_MAX_WINDOW_VOXELS if gpu else CPU_MAX_WINDOW_VOXELS))
    step = multiple * -(-16 // multiple)  # candidate sides: multiples of both ``multiple`` and 16
    top = max_side or 512
    sides = []
    for n in shape:
        full = -(-n // step) * step  # the axis, padded to a whole step
        low = min(full, 4 * step)
        sides.append(list(range(low, min(top, full) + 1, step)) or [min(full, top)])
    import numpy as np

    a_side, b_side = (np.array(s, dtype=np.int64) for s in np.meshgrid(sides[0], sides[1], indexing="ij"))
    a_side, b_side = a_side.ravel(), b_side.ravel()
    n_plane = np.array([windows_along(shape[0], a, overlap) * windows_along(shape[1], b, overlap)
                        for a, b in zip(a_side, b_side)], dtype=np.int64)
    nz = shape[2]
    slab_counts = [1]
    if max_slices is not None and max_slices < nz:
        first = -(-nz // max(1, max_slices))
        slab_counts = list(range(first, first + 9))
    best = fallback = None
    for c in sides[2]:
        margin = min(nz, max(c // 4, multiple))
        ok = a_side * b_side * c <= cap
        if not ok.any():  # no window fits the cap: the smallest
            ok = a_side * b_side == (a_side * b_side).min()
        for k in slab_counts:
            slab = -(-nz // k)
            extents = [min(nz, z0 + slab + margin) - max(0, z0 - margin) for z0 in range(0, nz, slab)]
            fits = max_slices is None or max(extents) <= max_slices
            z_windows = sum(windows_along(e, c, overlap) for e in extents)
            voxels = np.where(ok, n_plane * a_side * b_side * z_windows * c, np.iinfo(np.int64).max)
            i = int(np.lexsort((n_plane, voxels))[0])  # fewest voxels, then fewest windows
            key = (int(voxels[i]), int(n_plane[i]) * z_windows)
            choice = (key, (int(a_side[i]), int(b_side[i]), int(c)), slab)
            if fits and (best is None or key < best[0]):
                best = choice
            if not fits and (fallback is None or (slab, key) < (fallback[2], fallback[0])):
                fallback = choice  # nothing fits: the thinnest slabs
    _, roi, slab = best or fallback
    per_window = max(1, roi[0] * roi[1] * roi[2] * BYTES_PER_WINDOW_VOXEL)
    batch = int(max(1, min(8 if gpu else 1, budget // per_window)))
    return roi, slab, batch  # type: ignore[return-value]


def autocast_dtype(device: str, precision: str = "auto"):
    """The autocast dtype for ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) on ``device``, or None for fp32.

    ``auto``: bf16 on a GPU that supports it (fp16 otherwise) and on a CPU with native bf16 (AMX / AVX-512 BF16),
    fp32 elsewhere."""
    import torch

    precision = (precision or "auto").lower()
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ParameterError(f"unknown precision {precision!r} (use auto, fp32, bf16 or fp16)")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def sliding_window(net, x, sigma, *, device: str = "cpu", roi: tuple[int, int, int] | None = None,
                   batch: int | None = None, overlap: float = 0.25, precision: str = "auto",
                   slab: int | None = None):
    """Run a conditioned network ``net(x, sigma)`` over a whole 3D volume in overlapping windows.

    Windows are blended with a Gaussian importance map (MONAI :func:`~monai.inferers.sliding_window_inference`). To
    bound memory on large volumes the last axis is processed in slabs of ``slab`` voxels with a margin of a quarter
    window on each side, which is discarded, so only the input, the output and one slab's buffers are held at once.

    Parameters
    ----------
    net : a module taking ``(x [B,1,D,H,W], sigma)``, already on ``device`` and in eval mode.
    x : 3D float32 NumPy array in the network's units.
    sigma : noise level in the network's units (float) or a noise map of ``x``'s shape.
    roi, batch : window size and windows per call; None chooses them from the free memory (:func:`choose_window`).
    overlap : fraction of a window shared with its neighbour.
    precision : ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast).
    slab : slab thickness along the last axis; None: the whole axis on a GPU; on a CPU equal slabs whose float32
        buffers (margins included) fit :data:`CPU_SLAB_BUDGET`, chosen with the window (:func:`plan_windows`).

    Returns
    -------
    NumPy float32 array of ``x``'s shape.
    """
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    multiple = getattr(net, "multiple", 16)
    dtype = autocast_dtype(device, precision)
    gpu = device.startswith("cuda")
    layout = torch.contiguous_format if gpu else torch.channels_last_3d
    net = net.to(memory_format=layout)  # channels-last: oneDNN's fast 3D convolutions on a CPU (about 2× here)
    if not gpu:
        keep_freed_buffers()
    noise_map = np.ndim(sigma) == 3
    out = np.empty(x.shape, dtype=np.float32)
    nz = x.shape[2]
    most = None
    if not gpu:
        per_slice = x.shape[0] * x.shape[1] * 4 * (6 if noise_map else 4)  # input, map, output, count, padding
        most = max(multiple, int(CPU_SLAB_BUDGET // per_slice))
    if roi is None and slab is None:  # window and slabs chosen together
        roi, slab, auto_batch = plan_windows(x.shape, device, multiple, overlap=overlap, max_slices=most)
    else:
        if slab is None and most is not None:
            slab = -(-nz // -(-nz // most))  # equal slabs, as few as the budget allows
        slab = max(1, int(slab or nz))
        # a slab is read with a margin (a quarter window, discarded) on both sides: choose the window for that length
        zlen = min(nz, slab + 4 * multiple) if slab < nz else nz
        auto_roi, auto_batch = choose_window((x.shape[0], x.shape[1], zlen), device, multiple, overlap=overlap)
        roi = tuple(roi) if roi else auto_roi
    batch = batch or auto_batch
    margin = min(nz, max(roi[2] // 4, multiple)) if slab < nz else 0

    def predictor(window: torch.Tensor) -> torch.Tensor:
        if noise_map:
            img, level = window[:, :1], window[:, 1:]
        else:
            img, level = window, float(sigma)
        with torch.autocast(device_type="cuda" if gpu else "cpu", dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            img = img.contiguous(memory_format=layout)
            if not isinstance(level, float):
                level = level.contiguous(memory_format=layout)
            return net(img, level).float().contiguous()

    with torch.inference_mode():
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            a, b = max(0, z0 - margin), min(nz, z1 + margin)
            chunk = torch.empty((1, 2 if noise_map else 1, x.shape[0], x.shape[1], b - a), dtype=torch.float32)
            chunk[0, 0] = torch.from_numpy(np.asarray(x[:, :, a:b], dtype=np.float32))  # one copy, no concatenation
            if noise_map:
                chunk[0, 1] = torch.from_numpy(np.asarray(sigma[:, :, a:b], dtype=np.float32))
            chunk = chunk.to(device)
            res = sliding_window_inference(chunk, roi, batch, predictor, overlap=overlap, mode="gaussian",
                                           sigma_scale=0.125, padding_mode="replicate", sw_device=device,
                                           device=device)
            out[:, :, z0:z1] = res[0, 0, :, :, z0 - a:z1 - a].float().cpu().numpy()
            del chunk, res
    return out
