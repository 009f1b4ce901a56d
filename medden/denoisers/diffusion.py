"""Diffusion-prior denoising by posterior sampling: a denoised volume (the posterior mean) and a per-voxel map of how
much the posterior samples disagree (their standard deviation) — "what did the denoiser invent?".

Sampler (DiffPIR, Zhu et al., "Denoising diffusion models for plug-and-play image restoration", CVPR Workshops 2023)
---------------------------------------------------------------------------------------------------------------------
The prior (:mod:`medden.models.diffusion`) is a DDPM (Ho et al., NeurIPS 2020) of axial slice stacks in units
``z = 2·(x − offset)/scale − 1``. A measurement ``y = x + σ·n`` scaled by ``√ᾱ_t`` is distributed exactly as the
diffused ``x_t`` when ``σ̄_t = √((1 − ᾱ_t)/ᾱ_t)`` equals σ, so sampling starts at that step ``t*`` from
``x_{t*} = √ᾱ_{t*}·y`` (Kawar et al. make the same observation for DDRM, NeurIPS 2022): a denoising task needs only
the few steps from ``t*`` down to 0 (``steps``, spread evenly), not the thousand of an unconditional sample. Each step

1. predicts ``x̂₀ = (x_t − √(1−ᾱ_t)·ε̂(x_t, t))/√ᾱ_t`` with the prior (every slice with its neighbours, from the same
   ``x_t``);
2. **data consistency**: replaces ``x̂₀`` by the proximal point of the negative log-likelihood,
   ``argmin_x −log p(y | x) + λ/(2σ̄_t²)·‖x − x̂₀‖²`` (DiffPIR's ``ρ_t = λσ²/σ̄_t²``), so early steps lean on the
   measurement and late ones on the prior; ``λ`` is ``guidance``;
3. re-noises to the next step, ``x_{t'} = √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'})·(√(1−ζ)·ε̂' + √ζ·ε)`` with fresh ``ε``
   (``ζ = 1``: ancestral, the source of the samples' diversity).

Likelihoods (``likelihood``)
----------------------------
* ``gaussian`` — closed-form proximal step ``x = (y/σ² + λx̂₀/σ̄²)/(1/σ² + λ/σ̄²)``, per voxel when σ is a noise map.
  Low-dose CT uses this **weighted-Gaussian** form with the CT noise map of :func:`medden.noise.ct_noise_map`
  (image-domain FBP noise is close to Gaussian with a spatially varying variance; its in-plane correlation is
  ignored here).
* ``rician`` — MR magnitude. The start uses the power-image bias correction ``√max(y² − 2σ², 0)`` (``E[y²] = x² + 2σ²``;
  McGibney & Smith, Med Phys 1993; Gudbjartsson & Patz, MRM 1995) and each proximal step solves the exact Rician
  likelihood ``−log p(y|x) = x²/2σ² − log I₀(xy/σ²)`` by the fixed point
  ``x ← (y·A(xy/σ²)/σ² + λx̂₀/σ̄²)/(1/σ² + λ/σ̄²)``, ``A = I₁/I₀`` (the EM-type iteration of the Rician ML estimator,
  Sijbers et al., IEEE TMI 1998), which reduces to the Gaussian step at high SNR (``A → 1``).
* ``poisson`` — counts (PET/SPECT-like) or Poisson–Gaussian: the **weighted-Gaussian** approximation of the Poisson
  likelihood (penalised weighted least squares, Sauer & Bouman, IEEE TSP 1993) with variance ``a·x + b``, ``(a, b)``
  fitted to the scan by :func:`medden.noise.poisson_gaussian_params` and re-evaluated at the current ``x̂₀`` each step
  (not at the noisy ``y``, which would bias low counts; the reason we prefer it to the Anscombe transform, whose
  algebraic inverse is biased at low counts — Mäkitalo & Foi, IEEE TIP 2011).
* ``auto`` — ``rician`` for non-negative data, ``gaussian`` (with the CT noise map when ``sigma`` was estimated)
  otherwise.

Outputs
-------
``samples`` chains give the posterior mean and the standard deviation ``c·√(s²·(1 + 1/n) + β·σ²)`` (``s`` the
sample standard deviation, ddof 1; ``σ`` the noise level or map): the spread of the truth around the returned
**mean**, which includes the Monte-Carlo error of a mean of ``n`` samples. ``c`` (``uncertainty_scale``) and ``β``
(``uncertainty_floor``) come from the prior's card: a short-trained prior's samples disagree less than its errors,
most where they agree (flat tissue), so at export the spread is recalibrated on held-out validation data — ``β`` by
a least-squares fit of the binned squared error to ``s²`` and ``σ²``, then ``c`` so that ±2 standard deviations
cover 95.4 % of the validation voxels (σ-scaling, Levi et al. 2019; Kuleshov et al., ICML 2018).
``calibrated=False`` returns the raw spread (``c = 1``, ``β = 0``). With one sample the map is zero.

Volumes go through the sampler in slabs along the slice axis (the coarsest-spacing axis, else the last) that overlap
by ``2·margin`` slices and are blended with linear ramps, so memory is bounded by one slab's buffers.
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medden.conventions import slice_axis  # noqa: F401  (re-exported: medden.denoisers.diffusion.slice_axis)
from medden.denoisers.registry import Denoised, Param, register
from medden.errors import ParameterError

Progress = Callable[[int, int], None]

#: Bytes of working memory per slab voxel (input, noise map, chain state, x̂₀, two accumulators, blending, headroom).
BYTES_PER_SLAB_VOXEL = 48
#: Bytes of network activations per slice pixel per slice in a batch (16-channel 2D U-Net, measured order, headroom).
BYTES_PER_SLICE_PIXEL = 1200
#: The most posterior samples one call may draw: each costs a full reverse-diffusion run, and the mean's Monte-Carlo
#: error (σ_post/√n) is already negligible at a few dozen.
MAX_SAMPLES = 256
LIKELIHOODS = ("auto", "gaussian", "rician", "poisson")

# ---------------------------------------------------------------------------------------------------------------------
# the prior and the units
# ---------------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _cached_prior(path: str, mtime: float, device: str):
    from medden.models.diffusion import load_prior

    return load_prior(path, device=device)


def _normalisation(data: np.ndarray, card, override=None) -> tuple[float, float]:
    """``(offset, scale)`` so that ``z = 2·(x − offset)/scale − 1`` puts the data in the prior's ``[-1, 1]`` units:
    the card's :class:`~medden.models.Normalisation` (or ``override``; without either, the 99.9th percentile) fitted
    to the data. Data with negative values (CT in HU) under a percentile card are shifted so the minimum (air,
    bounded at −1024 HU) maps to −1."""
    from medden.models.card import MR_NORMALISATION

    norm = override if override is not None else getattr(card, "normalisation", None) or MR_NORMALISATION
    fitted = norm.fitted(data, shift_negative=True)
    return float(fitted.offset), float(fitted.scale)


def _timesteps(t_star: int, steps: int) -> list[int]:
    """``steps`` (at most ``t* + 1``) distinct integer steps from ``t*`` down to 0."""
    n = max(1, min(int(steps), t_star + 1))
    return sorted({int(round(v)) for v in np.linspace(t_star, 0, n)}, reverse=True)


# ---------------------------------------------------------------------------------------------------------------------
# the sampler on one slab (torch, slice axis first)
# ---------------------------------------------------------------------------------------------------------------------
class _Likelihood:
    """The data-consistency (proximal) step and the start point of one likelihood, in network units."""

    def __init__(self, kind: str, y, var, *, scale: float, offset: float, poisson_ab=None) -> None:
        self.kind, self.y, self.var = kind, y, var  # var: σ² in network units (tensor broadcastable to y)
        self.scale, self.offset, self.ab = scale, offset, poisson_ab

    def start(self):
        """The measurement as an estimate of ``x₀`` plus noise of variance ``var`` (network units)."""
        import torch

        if self.kind != "rician":
            return self.y
        m, var_m = (self.y + 1) / 2, self.var / 4  # magnitude in units of the scale
        return 2 * torch.sqrt(torch.clamp(m * m - 2 * var_m, min=0)) - 1

    def variance(self, x0):
        """σ² (network units) of the measurement at ``x₀``: fixed, or Poisson–Gaussian ``a·x + b`` at ``x₀``."""
        import torch

        if self.kind != "poisson":
            return self.var
        a, b = self.ab
        phys = torch.clamp((x0 + 1) / 2 * self.scale + self.offset, min=0)
        return torch.clamp(a * phys + b, min=1e-12) * (2 / self.scale) ** 2

    def prox(self, x0, sb2: float, lam: float, iterations: int = 3):
        """``argmin_x −log p(y|x) + λ/(2σ̄²)‖x − x₀‖²``."""
        import torch

        if not lam < float("inf"):
            return x0
        w_prior = lam / sb2
        if self.kind == "rician":
            y_m, x0_m = (self.y + 1) / 2, torch.clamp((x0 + 1) / 2, min=0)
            var_m, wp = self.var / 4, w_prior * 4  # σ̄² in magnitude units is sb2/4
            m = x0_m
            for _ in range(iterations):
                u = m * y_m / var_m
                ratio = torch.special.i1e(u) / torch.special.i0e(u)
                m = (y_m * ratio / var_m + wp * x0_m) / (1 / var_m + wp)
            return 2 * m - 1
        w_data = 1 / torch.clamp(self.variance(x0), min=1e-12)
        return (w_data * self.y + w_prior * x0) / (w_data + w_prior)


def _predict_x0(net, x, t: int, *, batch: int, dtype, device: str):
    """``x̂₀`` for every slice of ``x`` (``[Z, H, W]``, all at step ``t``), slices in batches with their neighbours."""
    import torch
    import torch.nn.functional as F

    nz, h, w = x.shape
    k, mult = net.neighbours, net.multiple
    ph, pw = (-h) % mult, (-w) % mult
    a = float(net.alphas_cumprod[t])
    out = torch.empty_like(x)
    offsets = torch.arange(-k, k + 1, device=x.device)
    for b0 in range(0, nz, batch):
        idx = torch.arange(b0, min(nz, b0 + batch), device=x.device)
        nb = (idx[:, None] + offsets[None, :]).abs()  # reflect at the slab's ends
        nb = torch.where(nb > nz - 1, 2 * (nz - 1) - nb, nb).clamp(0, nz - 1)
        stack = x[nb]  # [B, 2k+1, H, W]
        if ph or pw:
            stack = F.pad(stack, (0, pw, 0, ph), mode="replicate")
        tt = torch.full((len(idx),), t, device=x.device, dtype=torch.long)
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                            dtype=dtype or torch.float32, enabled=dtype is not None):
            eps = net(stack, tt).float()[:, 0, :h, :w]
        out[idx] = (x[idx] - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return out


def _sample_slab(net, lik: _Likelihood, t_star: int, ts: list[int], *, generator, lam: float, zeta: float,
                 batch: int, dtype, device: str, tick: Callable[[], None]):
    """One posterior sample of a slab (network units, ``[Z, H, W]``)."""
    import torch

    acp = net.alphas_cumprod
    a_star = float(acp[t_star])
    y0 = lik.start()
    # top up the measurement's noise to exactly σ̄(t*) where it is lower (discretised t*, noise maps)
    extra = torch.clamp((1 - a_star) / a_star - lik.var, min=0)
    x = math.sqrt(a_star) * (y0 + torch.sqrt(extra) * torch.randn(y0.shape, generator=generator, device=y0.device))
    x0 = x
    for i, t in enumerate(ts):
        a = float(acp[t])
        x0 = _predict_x0(net, x, t, batch=batch, dtype=dtype, device=device).clamp_(-1.0, 3.0)
        x0 = lik.prox(x0, (1 - a) / a, lam)
        tick()
        if i + 1 == len(ts):
            break
        ap = float(acp[ts[i + 1]])
        eps_hat = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * (math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * noise)
    return x0


# ---------------------------------------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------------------------------------
def posterior(data: np.ndarray, sigma, *, spacing=(1.0, 1.0, 1.0), device: str = "cpu", samples: int = 8,
              steps: int = 6, seed: int = 0, likelihood: str = "auto", guidance: float = 0.0,
              stochasticity: float = 1.0, weights: str | Path = "", precision: str = "auto", noise=None,
              prior=None, slab: int | None = None, calibrated: bool = True, progress: Progress | None = None,
              modality: str = "MR", normalisation=None) -> tuple[np.ndarray, np.ndarray]:
    """Sample the posterior of the clean volume under the diffusion prior: ``(mean, std)`` in the data's units.

    Parameters
    ----------
    data : 3D float array in physical units (MR signal, HU, counts).
    sigma : noise standard deviation in the data's units — per real/imaginary channel for Rician MR — a float, or a
        noise map of the data's shape (Gaussian likelihood only).
    spacing : voxel size (mm); the coarsest axis (if clearly coarser) is the slice axis.
    device : ``"cpu"`` or ``"cuda"``.
    samples : posterior samples (≥ 1); the standard deviation needs ≥ 2.
    steps : reverse-diffusion steps from ``t*`` (the step whose noise level matches σ) down to 0.
    seed : seeds every random draw: the same seed on the same device type gives the same result.
    likelihood : ``auto``, ``gaussian``, ``rician`` or ``poisson`` (see the module docstring).
    guidance : λ of the data-consistency step (DiffPIR's ``ρ_t = λσ²/σ̄_t²``); ``inf`` switches it off; 0 (default)
        takes the value tuned on validation data and recorded on the prior's card (1 without a card).
    stochasticity : ζ in [0, 1], the fraction of fresh noise when re-noising (1: ancestral sampling).
    weights : a diffusion prior ``.safetensors`` (with its ``.json`` card); empty: the shipped MR prior.
    precision : autocast precision of the network (``auto``, ``fp32``, ``bf16``, ``fp16``).
    noise : a :class:`medden.noise.NoiseEstimate`; its CT noise map, when present, weights the Gaussian likelihood.
    prior : a :class:`medden.models.diffusion.SlicePrior` to use instead of loading ``weights`` (tests, notebooks).
    slab : slices per slab along the slice axis; None: the whole volume when it fits the memory budget.
    calibrated : apply the card's ``uncertainty_scale`` and ``uncertainty_floor`` (fitted on validation data at
        export, see :func:`medden.training.diffusion.calibrate_sampler`); False gives the raw sample spread.
    progress : called as ``progress(done, total)`` after every reverse step of every sample.
    modality : picks the shipped prior when ``weights`` is empty: the CT prior for CT, the MR prior otherwise.
    normalisation : a :class:`medden.models.Normalisation` replacing the card's (for a ``prior`` given directly).

    Returns
    -------
    (mean, std)
        float32 arrays of the data's shape: the posterior mean and the per-voxel standard deviation of its error.

    Examples
    --------
    >>> import numpy as np
    >>> from medden.models.diffusion import build_prior
    >>> x = np.random.default_rng(0).normal(100, 5, (24, 24, 6)).astype("float32")
    >>> mean, std = posterior(x, 5.0, samples=2, steps=2, prior=build_prior(channels=(8, 8), norm_num_groups=4))
    >>> mean.shape == std.shape == x.shape and bool((std >= 0).all())
    True
    """
    import torch

    from medden.inference import autocast_dtype
    from medden.models.diffusion import t_for_sigma

    x = np.asarray(data, dtype=np.float32)
    _check_arguments(x, sigma, samples=samples, steps=steps, guidance=guidance, stochasticity=stochasticity,
                     likelihood=likelihood)
    net, card = _load_prior(prior, weights, modality, device)
    noise_map = np.ndim(sigma) == 3
    sig_global = float(np.median(sigma)) if noise_map else float(sigma)
    if not np.isfinite(sig_global) or sig_global < 0:
        raise ParameterError(f"sigma must be a finite number ≥ 0, got {sig_global}")
    if sig_global == 0 or x.size == 0:
        return x.copy(), np.zeros_like(x)
    lik_kind, sigma_arr, poisson_ab = _choose_likelihood(likelihood, x, sigma, noise)
    guidance, std_scale, std_floor = _sampler_settings(card, guidance, calibrated)
    offset, scale = _normalisation(x, card, normalisation)
    to_net = 2.0 / scale
    sig_net = sig_global * to_net
    if sig_net > net.sigma_max:
        raise ParameterError(f"noise sigma {sig_global:.4g} is {sig_net / 2:.1%} of the intensity scale, beyond the "
                             f"{net.sigma_max / 2:.1%} the diffusion prior was trained for")
    t_star = t_for_sigma(net, sig_net)
    ts = _timesteps(t_star, steps)

    axis = slice_axis(spacing)
    xs = np.moveaxis(x, axis, 0)  # slice axis first
    smap = np.moveaxis(np.asarray(sigma_arr, dtype=np.float32), axis, 0) if np.ndim(sigma_arr) == 3 else None
    plan = _SlabPlan.for_volume(xs.shape, n_steps=len(ts), device=device, slab=slab)
    dtype = autocast_dtype(device, precision)
    tick = _ticker(progress, total=len(plan.cores) * int(samples) * len(ts))
    blend = _Blend(xs.shape)
    with torch.inference_mode():
        for si, (a, b, z0, z1) in enumerate(plan.windows()):
            y = (torch.from_numpy(np.ascontiguousarray(xs[a:b])).to(device) - offset) * to_net - 1
            if smap is not None:
                var = (torch.from_numpy(np.ascontiguousarray(smap[a:b])).to(device) * to_net) ** 2
            else:
                var = torch.full((1, 1, 1), sig_net ** 2, device=device)
            lik = _Likelihood(lik_kind, y, var, scale=scale, offset=offset, poisson_ab=poisson_ab)

            def draw(k: int):
                gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + si * 10_007 + k)
                return _sample_slab(net, lik, t_star, ts, generator=gen, lam=float(guidance),
                                    zeta=float(stochasticity), batch=plan.batch, dtype=dtype, device=device, tick=tick)

            m, std = _moments(draw, int(samples), var, std_scale=std_scale, std_floor=std_floor)
            blend.add(a, b, z0, z1, mean=(m.cpu().numpy() + 1) / to_net + offset, std=std.cpu().numpy() / to_net)
            del y, var, lik, m, std
    mean, std = blend.result()
    return (np.ascontiguousarray(np.moveaxis(mean, 0, axis)), np.ascontiguousarray(np.moveaxis(std, 0, axis)))


# ---------------------------------------------------------------------------------------------------------------------
# the steps of :func:`posterior`
# ---------------------------------------------------------------------------------------------------------------------
def _check_arguments(x: np.ndarray, sigma, *, samples, steps, guidance, stochasticity, likelihood) -> None:
    if x.ndim != 3:
        raise ParameterError(f"diffusion denoising needs a 3D volume, got shape {x.shape}")
    if int(samples) != samples or samples < 1:
        raise ParameterError(f"samples must be a positive integer, got {samples}")
    if samples > MAX_SAMPLES:
        raise ParameterError(f"samples must be at most {MAX_SAMPLES} (each sample is a full reverse-diffusion run; "
                             f"the mean's Monte-Carlo error is negligible long before), got {samples}")
    if int(steps) != steps or steps < 1:
        raise ParameterError(f"steps must be a positive integer, got {steps}")
    if not guidance >= 0:
        raise ParameterError(f"guidance must be >= 0 (0: the prior card's tuned value), got {guidance}")
    if not 0 <= stochasticity <= 1:
        raise ParameterError(f"stochasticity must be in [0, 1], got {stochasticity}")
    if likelihood not in LIKELIHOODS:
        raise ParameterError(f"likelihood must be auto, gaussian, rician or poisson, got {likelihood!r}")
    if np.ndim(sigma) == 3 and np.shape(sigma) != x.shape:
        raise ParameterError(f"noise map shape {np.shape(sigma)} differs from the data's {x.shape}")


def _load_prior(prior, weights, modality: str, device: str):
    """``(network, card)``: the given ``prior`` (no card), else the weights file, else the modality's shipped prior."""
    if prior is not None:
        return prior.to(device).eval(), None
    from medden.models.card import shipped_prior_path

    path = Path(weights) if weights else shipped_prior_path(modality)
    if path.is_file():
        return _cached_prior(str(path.resolve()), path.stat().st_mtime, device)
    return _cached_prior(str(path), 0.0, device)  # raises the clear ModelError


def _choose_likelihood(likelihood: str, x: np.ndarray, sigma, noise) -> tuple[str, Any, tuple | None]:
    """``(kind, sigma or noise map, Poisson–Gaussian (a, b) or None)`` for the data-consistency step."""
    noise_map = np.ndim(sigma) == 3
    kind = likelihood
    if kind == "auto":
        kind = "rician" if float(x.min()) >= 0 else "gaussian"
    if kind == "rician" and noise_map:
        raise ParameterError("the Rician likelihood takes one sigma, not a noise map")
    if kind == "rician" and float(x.min()) < 0:
        raise ParameterError("the Rician likelihood needs non-negative magnitude data")
    sigma_arr = sigma
    if kind == "gaussian" and not noise_map and noise is not None and getattr(noise, "noise_map", None) is not None:
        sigma_arr = np.asarray(noise.noise_map, dtype=np.float32)  # CT: weighted Gaussian
    poisson_ab = None
    if kind == "poisson":
        from medden.errors import InputError
        from medden.noise.estimate import poisson_gaussian_params

        try:
            a, b = poisson_gaussian_params(x, mask=x > 0)
            poisson_ab = (max(a, 1e-12), max(b, 0.0))
        except InputError:  # too little structure to fit a line: fall back to the Gaussian form with sigma
            kind = "gaussian"
    return kind, sigma_arr, poisson_ab


def _sampler_settings(card, guidance: float, calibrated: bool) -> tuple[float, float, float]:
    """``(λ, c, β)``: the data-consistency weight (0: the card's tuned value, 1 without one) and the uncertainty
    calibration recorded on the prior's card (``c = 1, β = 0`` when not ``calibrated``)."""
    tuned = (card.noise.get("sampler", {}) if card is not None and isinstance(card.noise, dict) else {})
    if not guidance:
        guidance = float(tuned.get("guidance", 1.0))
    std_scale = float(tuned.get("uncertainty_scale", 1.0)) if calibrated else 1.0
    std_floor = float(tuned.get("uncertainty_floor", 0.0)) if calibrated else 0.0
    return guidance, std_scale, std_floor


@dataclasses.dataclass(frozen=True)
class _SlabPlan:
    """The memory budget's schedule: slabs of ``slab`` slices (cores) along the slice axis, each sampled with
    ``margin`` extra slices on both sides, ``batch`` slices per network call."""

    n: int
    cores: tuple[tuple[int, int], ...]
    margin: int
    batch: int

    @classmethod
    def for_volume(cls, shape, *, n_steps: int, device: str, slab: int | None) -> "_SlabPlan":
        from medden.inference import free_memory

        nz, h, w = shape
        gpu = device.startswith("cuda")
        budget = 0.5 * free_memory(device) if gpu else min(1.5e9, 0.4 * free_memory(device))
        batch = int(max(1, min(64 if gpu else 16, budget // 2 // max(1, h * w * BYTES_PER_SLICE_PIXEL))))
        margin = min(nz, max(2, n_steps))
        if slab is None:
            per_slice = h * w * BYTES_PER_SLAB_VOXEL
            slab = nz if nz * per_slice <= budget / 2 else max(2 * margin + 1,
                                                               int(budget / 2 // per_slice) - 2 * margin)
        slab = max(1, int(slab))
        margin = min(margin, max(1, slab // 2))
        return cls(nz, tuple((z0, min(nz, z0 + slab)) for z0 in range(0, nz, slab)), margin, batch)

    def windows(self):
        """``(a, b, z0, z1)`` per slab: the sampled slices ``[a, b)`` around the core ``[z0, z1)``."""
        for z0, z1 in self.cores:
            if len(self.cores) > 1:
                yield max(0, z0 - self.margin), min(self.n, z1 + self.margin), z0, z1
            else:
                yield z0, z1, z0, z1


def _ticker(progress: Progress | None, total: int) -> Callable[[], None]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


def _moments(draw: Callable[[int], Any], n: int, var, *, std_scale: float, std_floor: float):
    """Mean of ``n`` samples ``draw(k)`` (Welford's running mean) and the calibrated standard deviation of its error,
    ``c·√(s²·(1 + 1/n) + β·σ²)`` (zero for one sample)."""
    import torch

    m = m2 = None
    for k in range(n):
        s = draw(k)
        if m is None:
            m, m2 = torch.zeros_like(s), torch.zeros_like(s)
        delta = s - m
        m += delta / (k + 1)
        m2 += delta * (s - m)
    std = std_scale * torch.sqrt(m2 / (n - 1) * (1 + 1 / n) + std_floor * var) if n > 1 else torch.zeros_like(m)
    return m, std


class _Blend:
    """Slabs blended with linear ramps over their overlaps (the two windows' weights sum to 1 there), flat in the
    core; variances are blended, not standard deviations."""

    def __init__(self, shape) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.zeros(shape, np.float64)
        self.weight = np.zeros(shape[0], np.float64)

    def add(self, a: int, b: int, z0: int, z1: int, *, mean: np.ndarray, std: np.ndarray) -> None:
        zz = np.arange(a, b, dtype=np.float64)
        ramp = np.ones(b - a)
        if a < z0:
            ramp = np.minimum(ramp, (zz - a + 1) / (2 * (z0 - a) + 1))
        if b > z1:
            ramp = np.minimum(ramp, (b - zz) / (2 * (b - z1) + 1))
        self.mean[a:b] += ramp[:, None, None] * mean
        self.var[a:b] += ramp[:, None, None] * std ** 2
        self.weight[a:b] += ramp

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        wz = np.maximum(self.weight, 1e-12)[:, None, None]
        return (self.mean / wz).astype(np.float32), np.sqrt(self.var / wz).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# the registered method
# ---------------------------------------------------------------------------------------------------------------------
def _available() -> bool:
    from medden.models.card import prior_available

    return prior_available()


def _licence() -> str:
    from medden.models.card import SHIPPED_PRIORS, WEIGHTS_DIR, card_licence

    return card_licence(WEIGHTS_DIR / SHIPPED_PRIORS["MR"])


@register("diffusion", family="diffusion", gpu=True, modalities=("MR", "CT"), availability=_available,
          licence=_licence,
          summary="posterior sampling with a 2.5D diffusion prior (DiffPIR): posterior mean, and its per-voxel "
                  "uncertainty with return_std=True (CLI: --uncertainty)",
          params=(Param("samples", 8, "", "posterior samples averaged (the uncertainty map needs >= 2)", minimum=1,
                        maximum=MAX_SAMPLES),
                  Param("steps", 6, "", "reverse-diffusion steps from the step matching the noise level down to 0",
                        minimum=1, maximum=1000),
                  Param("seed", 0, "", "seed of every random draw (same seed and device type: same output)",
                        minimum=0),
                  Param("likelihood", "auto", "", "noise model of the data-consistency step", choices=LIKELIHOODS),
                  Param("guidance", 0.0, "", "weight λ of the data-consistency step (DiffPIR); 0 = tuned value on the "
                                             "prior's card; inf = off", minimum=0.0, finite=False),
                  Param("weights", "", "", "a diffusion prior (.safetensors with its .json card); empty = shipped"),
                  Param("precision", "auto", "", "autocast precision", choices=("auto", "fp32", "bf16", "fp16"))))
def diffusion(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality: str = "MR", device: str = "cpu",
              progress: Progress | None = None, samples: int = 8, steps: int = 6, seed: int = 0,
              likelihood: str = "auto", guidance: float = 0.0, weights: str = "", precision: str = "auto") -> Denoised:
    """:func:`posterior` in the registry's convention: the posterior mean and its standard deviation."""
    mean, std = posterior(data, noise.sigma, spacing=spacing, device=device, samples=samples, steps=steps, seed=seed,
                          likelihood=likelihood, guidance=guidance, weights=weights, precision=precision, noise=noise,
                          progress=progress, modality=modality)
    return Denoised(mean, std)


def posterior_volume(volume, sigma: float | str = "auto", device: str = "auto", progress: Progress | None = None,
                     **params: Any):
    """Denoise a :class:`~medden.volume.Volume` by posterior sampling: ``(mean volume, std volume)``.

    Exactly :func:`medden.denoisers.denoise` with ``method="diffusion"`` and ``return_std=True`` (same noise
    estimation, parameters and provenance in ``meta['denoise']``): the per-voxel standard deviation comes back as a
    second volume of the same geometry and units.

    Parameters
    ----------
    volume : the scan.
    sigma : noise standard deviation in the volume's units, or ``"auto"``.
    device : ``auto``, ``cpu`` or ``cuda``.
    progress : ``progress(done, total)`` over samples × steps (× slabs).
    **params : the method's parameters (``samples``, ``steps``, ``seed``, ...; see ``medden methods``).
    """
    from medden.denoisers import denoise

    return denoise(volume, method="diffusion", sigma=sigma, device=device, return_std=True, progress=progress,
                   **params)
