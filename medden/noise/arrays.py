"""Array plumbing shared by the noise models: NumPy or torch in, the same type, dtype and device out.

Every noise model computes in torch (so one code path serves CPU and GPU) and draws its random numbers from a
``torch.Generator``. A seed gives the same numbers on every run of the same device type; CPU and CUDA streams differ,
so :func:`medden.noise.simulate` runs on the CPU unless told otherwise.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from medden.errors import InputError

GeneratorLike = torch.Generator | int | None


def to_tensor(data: Any, device: str | torch.device | None = None) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``data`` as a float32 tensor (on ``device``, default: where it already is) and a function restoring the input's
    type, dtype and device on a result."""
    if isinstance(data, torch.Tensor):
        src_device, src_dtype = data.device, data.dtype
        out_dtype = src_dtype if src_dtype.is_floating_point else torch.float32
        x = data.to(device=device or src_device, dtype=torch.float32)
        return x, lambda y: y.to(device=src_device, dtype=out_dtype)
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"noise models need numeric data, got dtype {arr.dtype}")
    out_dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device or "cpu")
    return x, lambda y: y.detach().cpu().numpy().astype(out_dtype, copy=False)


def make_generator(generator: GeneratorLike, device: torch.device) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device``: an int seeds a new one, a generator is used as is, None means torch's
    global generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(int(generator))
    raise InputError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal samples of ``x``'s shape, dtype and device."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
