"""``simulate``: add a registered noise model's noise to a :class:`~medden.volume.Volume`, reproducibly."""
from __future__ import annotations

from typing import Any

import numpy as np

from medden import conventions
from medden.errors import InputError, ParameterError
from medden.noise.registry import get_model
from medden.volume import Volume

#: ``sigma="N%"`` is N percent of this percentile of the non-zero voxels.
SIGMA_PERCENT_REFERENCE = 99.9


def resolve_sigma(data: np.ndarray, sigma: float | str) -> float:
    """A noise level in data units from a number or from ``"N%"`` (percent of the 99.9th percentile of the non-zero
    voxels)."""
    if isinstance(sigma, str):
        text = sigma.strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not percent >= 0:
                    raise ValueError
                from medden.noise.mri import reference_signal

                return percent / 100 * reference_signal(data, SIGMA_PERCENT_REFERENCE)
            sigma = float(text)
        except ValueError:
            raise ParameterError(f"sigma must be a number or a percentage like '3%', got {text!r}") from None
    if not float(sigma) >= 0:
        raise ParameterError(f"sigma must be >= 0, got {sigma}")
    return float(sigma)


def axial_axis(volume: Volume) -> int:
    """The voxel axis that points most nearly superior–inferior: the axis across axial slices."""
    return conventions.axial_axis(volume.direction)


def simulate(volume: Volume, model: str, *, seed: int = 0, device: str = "cpu", **params: Any) -> Volume:
    """The volume with simulated noise of ``model`` (see :func:`medden.noise.list_models`).

    Parameters
    ----------
    volume : the clean (or full-dose) volume.
    model : a registered noise model: ``gaussian``, ``poisson``, ``poisson-gaussian``, ``rician``, ``noncentral-chi``,
        ``lowdose-ct``, ``lowdose-ct-insertion``.
    seed : random seed; the same seed, parameters and device type give identical output.
    device : ``"cpu"`` (default, the same numbers on every machine), ``"cuda"`` or ``"auto"``. CPU and CUDA random
        streams differ.
    **params : the model's physical parameters. ``sigma`` may be ``"N%"``: N percent of the 99.9th percentile of the
        non-zero voxels.

    Returns
    -------
    Volume
        Same geometry and modality; ``history`` gains ``"simulated MODEL k=v ... seed=S"`` and ``meta["simulation"]``
        records the model, seed, device and every parameter (defaults included).

    Examples
    --------
    >>> from medden.phantoms import shepp_logan_3d
    >>> noisy = simulate(shepp_logan_3d((32, 32, 32)), "rician", sigma="5%", seed=0)
    >>> noisy.history[-1]
    'simulated rician sigma=5% seed=0'
    """
    import torch

    from medden.inference import resolve_device

    if not isinstance(volume, Volume):
        raise InputError(f"simulate needs a medden Volume, got {type(volume).__name__}")
    spec = get_model(model)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ParameterError(f"seed must be an integer, got {seed!r}")
    resolved = spec.resolve_params(params)
    given = {k: resolved[k] for k in params if resolved[k] is not None}
    call = {k: v for k, v in resolved.items() if v is not None}  # the registry's defaults are the functions' own
    if "sigma" in call:
        call["sigma"] = resolve_sigma(volume.data, call["sigma"])
    if spec.needs_axial and volume.modality not in ("CT", "OT"):
        raise InputError(f"the {model} model needs a CT volume in HU, but this volume's modality is "
                         f"{volume.modality}")
    dev = resolve_device(device)
    data = torch.from_numpy(volume.data).to(dev)
    axis = axial_axis(volume) if spec.needs_axial else 2
    if spec.needs_axial:
        data = data.movedim(axis, 2)
    if spec.needs_spacing:
        sp = volume.spacing
        call["spacing_mm"] = tuple(sp[a] for a in [a for a in range(3) if a != axis] + [axis])  # movedim's order
    generator = torch.Generator(device=dev).manual_seed(int(seed))
    noisy = spec.fn(data, generator=generator, **call)
    if spec.needs_axial:
        noisy = noisy.movedim(2, axis)
    noisy = noisy.cpu().numpy().astype(np.float32, copy=False)
    record = {"model": spec.name, "seed": int(seed), "device": dev,
              "params": {p.name: given.get(p.name, p.default) for p in spec.params}}
    if "sigma" in call:
        record["sigma_data_units"] = call["sigma"]
    shown = " ".join(f"{k}={v}" for k, v in given.items())
    step = f"simulated {spec.name} {shown} seed={int(seed)}".replace("  ", " ")
    return volume.with_data(noisy, step=step, simulation=record)
