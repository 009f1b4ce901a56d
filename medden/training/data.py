"""Training data: volumes normalised per modality, synthetic piecewise-smooth volumes, and patch sampling with noise
made on the fly by the physics models of :mod:`medden.noise`.

Normalisation: the model card's (:data:`~medden.models.card.MR_NORMALISATION`: the 99.9th percentile of the
non-zero voxels; :data:`~medden.models.card.CT_NORMALISATION`: ``HU / 1000``), fitted and applied here exactly as
inference does, and recorded on the exported card.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medden.conventions import CT_HU_PER_UNIT
from medden.models.card import CT_NORMALISATION, MR_NORMALISATION
from medden.models.losses import recorrupted_pair
from medden.training.config import DataSpec, TrainConfig

CT_SCALE = CT_HU_PER_UNIT  # HU per network unit (one definition: medden.conventions)
CT_REFERENCE_DOSE = 0.25  # CT noise realisations are simulated at this dose, then rescaled to each drawn dose
CT_LEVEL_DOSES = (0.03, 0.05, 0.1, 0.25, 0.5, 0.8)  # doses at which the noise estimator's level is tabulated


@dataclass
class TrainVolume:
    """One normalised volume (``clean``; for CT the full-dose scan), with what the sampler needs."""

    name: str
    clean: np.ndarray
    pair: np.ndarray | None = None  # Noise2Noise: the second noisy scan
    level: float = 0.0  # its own noise level (network units): self-supervised conditioning, CT full-dose noise
    ct_noise: list[np.ndarray] = field(default_factory=list)  # CT: noise realisations at CT_REFERENCE_DOSE
    ct_noise_level: float = 0.0  # CT: the standard deviation those realisations add in soft tissue (network units)
    ct_levels: list[tuple[float, float]] = field(default_factory=list)  # CT: (log dose, estimated σ) pairs
    role: str = "clean"  # "clean": supervised target; "noisy": a real scan trained on by Recorrupted-to-Recorrupted
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # voxel size (mm), for resampling to random voxel sizes
    weight: float = 1.0  # relative sampling weight


def percentile_scale(data: np.ndarray) -> float:
    """The MR normalisation's scale for ``data`` (the card's, as inference fits it)."""
    return MR_NORMALISATION.fitted(data).scale


def _downsample(x: np.ndarray, factor: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """Average-pool by ``factor`` along the axes whose spacing is within 1.5× the finest (thick slices are kept)."""
    if factor <= 1:
        return x
    fine = min(spacing)
    k = tuple(factor if s <= 1.5 * fine else 1 for s in spacing)
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    return F.avg_pool3d(t, kernel_size=k, stride=k)[0, 0].numpy()


def _pad_to(x: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    pads = [(0, max(0, p - n)) for n, p in zip(x.shape, patch)]
    return np.pad(x, pads, mode="symmetric") if any(b for _, b in pads) else x


def load_volumes(specs: list[DataSpec], cfg: TrainConfig, cache_dir: Path, log=print) -> list[TrainVolume]:
    """Load, normalise (the card's normalisation, as inference) and, for CT, simulate the noise realisations
    (cached in ``cache_dir``); a ``noisy`` MR volume's own level comes from medden's noise estimator."""
    from medden.io import load_volume
    from medden.noise import estimate_noise
    from medden.phantoms import CT_TISSUE_EDGES, piecewise_smooth
    from medden.volume import Volume

    out = []
    for spec in specs:
        vol = load_volume(spec.path)
        if cfg.modality == "CT" and vol.modality != "CT":
            vol = _as_ct(vol)
        data = vol.data
        if spec.slices:
            data = data[:, :, spec.slices[0]:spec.slices[1]]
        pair = None
        if spec.pair:
            pair = load_volume(spec.pair).data
            if spec.slices:
                pair = pair[:, :, spec.slices[0]:spec.slices[1]]
        name = Path(spec.path).name
        if spec.piecewise_smooth_mm:  # CT only (the config says so)
            data = piecewise_smooth(data, vol.spacing, CT_TISSUE_EDGES, spec.piecewise_smooth_mm)
            name = f"{name} (piecewise-smooth {spec.piecewise_smooth_mm:g} mm)"
        if cfg.modality == "MR":
            data = _downsample(data, spec.downsample, vol.spacing)
            pair = None if pair is None else _downsample(pair, spec.downsample, vol.spacing)
            norm = MR_NORMALISATION.fitted(data)
            level = 0.0
            if spec.noise_level is not None:
                level = float(spec.noise_level)
            elif cfg.mode != "supervised" or spec.target == "noisy":
                level = float(norm.apply_sigma(estimate_noise(Volume(np.ascontiguousarray(data), vol.affine,
                                                                     modality="MR")).sigma))
        else:
            norm = CT_NORMALISATION
            sub = Volume(np.ascontiguousarray(data), vol.affine, modality="CT")
            level = float(norm.apply_sigma(estimate_noise(sub).sigma))
        unit = lambda a: None if a is None else _pad_to(norm.apply(a).astype(np.float32), cfg.patch_size)  # noqa: E731
        tv = TrainVolume(name, unit(data), unit(pair), level, role=spec.target,
                         spacing=_spacing(vol.spacing, spec.downsample if cfg.modality == "MR" else 1),
                         weight=spec.weight)
        if cfg.modality == "CT" and cfg.mode == "supervised":
            _ct_realisations(tv, sub, spec, cfg, cache_dir, log)
            tv.ct_noise = [_pad_to(n, cfg.patch_size) for n in tv.ct_noise]
        out.append(tv)
        log(f"  {name}: {tv.clean.shape} {tv.role}, own noise level {tv.level:.4f}"
            + (f", +{tv.ct_noise_level:.4f} at dose {CT_REFERENCE_DOSE}; estimator levels "
               + ", ".join(f"{math.exp(d):.2f}:{v:.4f}" for d, v in tv.ct_levels[1:]) if tv.ct_noise else ""))
    return out


def _spacing(spacing, factor: int) -> tuple[float, float, float]:
    fine = min(spacing)
    return tuple(float(s) * (factor if factor > 1 and s <= 1.5 * fine else 1) for s in spacing)


def _as_ct(vol):
    import dataclasses

    return dataclasses.replace(vol, modality="CT")


def _ct_realisations(tv: TrainVolume, vol, spec: DataSpec, cfg: TrainConfig, cache_dir: Path, log) -> None:
    """Projection-domain low-dose noise (:func:`medden.noise.lowdose_ct_insertion`) at the reference dose, cached.

    The inserted noise is Gaussian in the projection domain with variance ∝ (1 − a)/a (quantum part), and FBP is
    linear, so a realisation at dose a₀ times √(((1 − a)/a) / ((1 − a₀)/a₀)) is a realisation at dose a (electronic
    noise, which matters only for photon-starved rays, is not rescaled exactly)."""
    from medden.noise import estimate_noise, simulate

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{Path(spec.path).name.split('.')[0]}_{spec.slices[0] if spec.slices else 0}"
    if spec.piecewise_smooth_mm:
        tag += f"_ps{spec.piecewise_smooth_mm:g}"
    for k in range(cfg.noise.ct_realisations):
        f = cache_dir / f"{tag}_dose{CT_REFERENCE_DOSE}_r{k}.npy"
        if not f.is_file():
            log(f"  simulating low-dose CT noise for {tag} (realisation {k})")
            noisy = simulate(vol, "lowdose-ct-insertion", seed=1000 + k, dose=CT_REFERENCE_DOSE)
            np.save(f, ((noisy.data - vol.data) / CT_SCALE).astype(np.float32))
        tv.ct_noise.append(np.load(f))
    tissue = (vol.data > -200) & (vol.data < 300)
    tv.ct_noise_level = float(np.std(tv.ct_noise[0][tissue])) if tissue.any() else float(np.std(tv.ct_noise[0]))
    # The level the network is told is what medden's CT estimator (used by sigma="auto" at inference) reports for the
    # scan at that dose, tabulated at a few doses and interpolated in log dose: the network learns what the estimator's
    # figure means, biases included, instead of a level inference can never know.
    from medden.volume import Volume

    levels = [(0.0, tv.level)]
    for dose in CT_LEVEL_DOSES:
        k = dose_factor(dose)
        noisy = Volume(vol.data + k * tv.ct_noise[0] * CT_SCALE, vol.affine, modality="CT")
        levels.append((math.log(dose), float(estimate_noise(noisy).sigma) / CT_SCALE))
    tv.ct_levels = sorted(levels)


def dose_factor(dose: float) -> float:
    """Factor turning a noise realisation at :data:`CT_REFERENCE_DOSE` into one at ``dose`` (quantum noise)."""
    a0 = CT_REFERENCE_DOSE
    return math.sqrt(((1 - dose) / dose) / ((1 - a0) / a0))


def ct_level(tv: TrainVolume, dose: float) -> float:
    """The estimator's σ for ``tv`` at ``dose``, interpolated in log dose."""
    xs, ys = zip(*tv.ct_levels)
    return float(np.interp(math.log(dose), xs, ys))


def synthetic_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 96)) -> np.ndarray:
    """A piecewise-smooth volume in [0, ~1]: random ellipsoids of random intensity inside a head-like ellipsoid, with
    a smooth multiplicative bias field and faint smooth texture; zero background (like a masked MR scan)."""
    from scipy.ndimage import gaussian_filter

    zz, yy, xx = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    Z, Y, X = np.meshgrid(zz, yy, xx, indexing="ij")
    vol = np.zeros(shape, np.float32)
    head = (Z / rng.uniform(0.7, 0.95)) ** 2 + (Y / rng.uniform(0.7, 0.95)) ** 2 + (X / rng.uniform(0.7, 0.95)) ** 2 < 1
    vol[head] = rng.uniform(0.2, 0.6)
    for _ in range(int(rng.integers(15, 40))):
        c = rng.uniform(-0.8, 0.8, 3)
        r = rng.uniform(0.03, 0.4, 3)
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        p = np.stack([Z - c[0], Y - c[1], X - c[2]], -1) @ rot
        inside = ((p / r) ** 2).sum(-1) < 1
        vol[inside & head] = rng.uniform(0.05, 1.0)
    bias = gaussian_filter(rng.normal(size=shape).astype(np.float32), 20)
    bias = 1 + 0.3 * bias / (np.abs(bias).max() + 1e-6)
    texture = gaussian_filter(rng.normal(size=shape).astype(np.float32), rng.uniform(1, 3))
    texture *= 0.05 / (texture.std() + 1e-6)
    vol = np.where(head, np.clip(vol * bias + texture * (vol > 0), 0, None), 0).astype(np.float32)
    return vol / percentile_scale(vol)


class PatchSampler:
    """Random patches ``(noisy input, target, level, weight mask)`` in network units, made on ``device``.

    The volumes are moved to ``device`` once (resident on a GPU); patches are cropped, resampled, augmented and given
    their noise there, so no CPU loader stands between the data and the network.

    * supervised MR, ``target="clean"`` volumes: a patch resampled to a random voxel size (``cfg.resample``: area
      averaging when coarser, which is what a thick slice is, trilinear when finer), × a random intensity scale,
      Rician / noncentral-χ noise at a random σ;
    * supervised MR, ``target="noisy"`` volumes (real scans with their own noise σ_y, estimated): Recorrupted-to-
      Recorrupted (Pang et al., CVPR 2021) at native resolution — input ``y + α·σ_y·z``, target ``y − σ_y·z/α`` with
      ``z`` standard normal, whose expected loss equals the loss against the noise-free volume plus a constant; the
      level told to the network is the input's, ``σ_y·√(1 + α²)``. The loss is taken where the scan's local mean is
      above ``4·σ_y`` (there its magnitude noise is Gaussian, which R2R assumes);
    * supervised CT, ``target="clean"``: full-dose patch plus a cached low-dose noise realisation rescaled to a
      random dose (the full-dose scan is the target, its own noise included, unless the entry asks for its noise-free
      piecewise-smooth version, ``piecewise_smooth_mm``);
    * supervised CT, ``target="noisy"``: Recorrupted-to-Recorrupted with those realisations as the recorrupting
      noise (:meth:`_recorrupted_ct`), unbiased for the noise-free scan;
    * ``n2n``: one noisy scan in, the other as target; ``n2v``: blind-spot masking (Krull et al., CVPR 2019) —
      masked voxels replaced by a random neighbour, the loss taken on them only.
    """

    def __init__(self, volumes: list[TrainVolume], cfg: TrainConfig, seed: int, device: str = "cpu") -> None:
        self.cfg, self.device = cfg, device
        self.volumes = [_resident(v, device) for v in volumes]
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        sizes = np.array([v.clean.numel() * v.weight ** 2 for v in self.volumes], float)
        self.p = np.sqrt(sizes) / np.sqrt(sizes).sum()  # large volumes sampled more, but not in proportion

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def _randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device)

    def _corner(self, shape, patch) -> tuple[int, ...]:
        return tuple(int(self.rng.integers(0, n - p + 1)) for n, p in zip(shape, patch))

    def _crop(self, vol: TrainVolume, patch=None) -> tuple[tuple[slice, ...], torch.Tensor]:
        patch = patch or self.cfg.patch_size
        for _ in range(8):  # prefer patches that are mostly object, not background
            c = self._corner(vol.clean.shape, patch)
            sl = tuple(slice(a, a + p) for a, p in zip(c, patch))
            x = vol.clean[sl]
            if self.cfg.modality == "CT" or float((x != 0).float().mean()) > 0.3:
                break
        return sl, x

    def _resampled(self, vol: TrainVolume) -> torch.Tensor:
        """A clean patch at a random voxel size: a region of ``patch × new/native`` voxels averaged (coarser) or
        interpolated (finer) to the patch size."""
        rs, patch = self.cfg.resample, self.cfg.patch_size
        if rs is None or self.rng.random() >= rs.probability:
            return self._crop(vol)[1]
        lo, hi = rs.voxel_mm
        new = [math.exp(self.rng.uniform(math.log(lo), math.log(hi)))] * 3
        if self.rng.random() < rs.thick_probability:  # one axis gets thick slices
            a, b = rs.slice_mm
            new[int(self.rng.integers(3))] = math.exp(self.rng.uniform(math.log(a), math.log(b)))
        region = [max(2, min(n, int(round(p * s / nat)))) for p, s, nat, n in
                  zip(patch, new, vol.spacing, vol.clean.shape)]
        _, x = self._crop(vol, tuple(region))
        x = x[None, None]
        coarse = [min(r, p) for r, p in zip(region, patch)]
        if coarse != region:
            x = F.interpolate(x, size=coarse, mode="area")
        if coarse != list(patch):
            x = F.interpolate(x, size=tuple(patch), mode="trilinear", align_corners=False)
        return x[0, 0]

    def _augment(self, arrays: list) -> list:
        if not self.cfg.augment:
            return arrays
        flips = [a for a in range(3) if self.rng.random() < 0.5]
        if self.cfg.modality == "CT":  # CT noise is correlated in-plane only: keep the slice axis last
            order = tuple(int(i) for i in self.rng.permutation(2)) + (2,)
        elif len(set(self.cfg.patch_size)) == 1:
            order = tuple(int(i) for i in self.rng.permutation(3))
        else:
            order = (0, 1, 2)
        out = []
        for a in arrays:
            if a is not None:
                a = torch.flip(a, flips) if flips else a
                a = a.permute(order).contiguous()
            out.append(a)
        return out

    def sample(self, batch: int | None = None):
        cfg = self.cfg
        xs, ys, levels, masks = [], [], [], []
        for _ in range(batch or cfg.batch_size):
            vol = self.volumes[int(self.rng.choice(len(self.volumes), p=self.p))]
            mask = None
            if cfg.mode == "supervised" and vol.role == "noisy" and cfg.modality == "MR":
                x, y, level, mask = self._recorrupted(vol)
            elif cfg.mode == "supervised" and vol.role == "noisy":
                x, y, level = self._recorrupted_ct(vol)
            elif cfg.mode == "supervised":
                x, y, level = self._supervised(vol)
            elif cfg.mode == "n2n":
                sl, a = self._crop(vol)
                b = vol.pair[sl]
                x, y = (a, b) if self.rng.random() < 0.5 else (b, a)
                level = vol.level
            else:
                x, y, mask = self._blind_spot(self._crop(vol)[1])
                level = vol.level
            x, y, mask = self._augment([x, y, mask])
            jitter = 1 + cfg.noise.level_jitter * self.rng.uniform(-1, 1)
            xs.append(x), ys.append(y), levels.append(max(level * jitter, 1e-4)), masks.append(mask)
        if any(m is not None for m in masks):
            masks = [torch.ones_like(x) if m is None else m for x, m in zip(xs, masks)]
            m = torch.stack(masks)[:, None].float()
        else:
            m = None
        return (torch.stack(xs)[:, None].float(), torch.stack(ys)[:, None].float(),
                torch.tensor(levels, dtype=torch.float32, device=self.device), m)

    def _supervised(self, vol: TrainVolume):
        from medden.noise import noncentral_chi, rician

        cfg = self.cfg
        if cfg.modality == "CT":
            sl, clean = self._crop(vol)
            lo, hi = cfg.noise.dose_range
            dose = math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
            noise = vol.ct_noise[int(self.rng.integers(len(vol.ct_noise)))][sl]
            return clean + dose_factor(dose) * noise, clean, ct_level(vol, dose)
        clean = self._resampled(vol)
        lo, hi = cfg.noise.sigma_range
        sigma = math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
        c = clean * float(self.rng.uniform(*cfg.intensity_scale))
        if cfg.noise.model == "noncentral-chi" and cfg.noise.coils > 1:
            x = noncentral_chi(c, sigma=sigma, coils=cfg.noise.coils, generator=self.gen)
        else:
            x = rician(c, sigma=sigma, generator=self.gen)
        return x, c, sigma

    def _recorrupted(self, vol: TrainVolume):
        """Recorrupted-to-Recorrupted on a real noisy scan: unbiased for the noise-free target (see the class). α is
        drawn log-uniformly in ``noise.r2r_alpha``: the input's level is ``σ_y·√(1 + α²)``; the higher levels are
        learnt from the clean volumes with Rician noise."""
        _, y = self._crop(vol)
        k = float(self.rng.uniform(*self.cfg.intensity_scale))
        y, s = y * k, max(vol.level * k, 1e-6)
        a_lo, a_hi = self.cfg.noise.r2r_alpha
        alpha = math.exp(self.rng.uniform(math.log(a_lo), math.log(a_hi)))
        x, target, level = recorrupted_pair(y, s, alpha, self._randn(y.shape))
        # magnitude noise is Gaussian (as R2R assumes) where the signal is well above the level
        fg = F.avg_pool3d(y[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0] > 3 * level
        return x, target, level, fg.float()

    def _recorrupted_ct(self, vol: TrainVolume):
        """Recorrupted-to-Recorrupted on a real CT scan ``y`` with its own noise (level ``σ_y``, estimated), at a dose
        ``d`` drawn in ``noise.dose_range``. ``z`` is a cached projection-domain noise realisation rescaled to ``σ_y``
        in soft tissue — FBP noise with the scan's geometry, the stand-in for the scan's own noise covariance. With
        ``α = √(1/d − 1)`` the input ``y + α·z`` carries the noise of a scan at dose ``d`` (quantum noise variance
        ∝ 1/dose) and the target ``y − z/α`` has noise uncorrelated with the input's, so the expected loss is the
        loss against the noise-free scan plus a constant: the network learns to remove the scan's own noise too,
        instead of returning it (a full-dose scan used as the target had taught it exactly that). The level told to
        the network is the input's, ``σ_y/√d``."""
        sl, y = self._crop(vol)
        lo, hi = self.cfg.noise.dose_range
        dose = math.exp(self.rng.uniform(math.log(lo), math.log(min(hi, 0.8))))
        alpha = math.sqrt(1.0 / dose - 1.0)
        z = vol.ct_noise[int(self.rng.integers(len(vol.ct_noise)))][sl] / max(vol.ct_noise_level, 1e-9)
        return recorrupted_pair(y, vol.level, alpha, z)  # level σ_y·√(1 + α²) = σ_y/√d

    def _blind_spot(self, noisy):
        """Noise2Void masking: a fraction of voxels replaced by a random voxel of their 5³ neighbourhood."""
        noisy = torch.as_tensor(noisy)
        x = noisy.clone()
        n = max(1, int(self.cfg.n2v_mask_fraction * x.numel()))
        idx = [torch.as_tensor(self.rng.integers(0, s, n), device=x.device) for s in x.shape]
        off = [self.rng.integers(-2, 3, n) for _ in x.shape]
        zero = (off[0] == 0) & (off[1] == 0) & (off[2] == 0)  # the replacement must not be the voxel itself
        off[0][zero] = 1
        src = [(i + torch.as_tensor(o, device=x.device)).clamp(0, s - 1) for i, o, s in zip(idx, off, x.shape)]
        x[tuple(idx)] = noisy[tuple(src)]
        mask = torch.zeros_like(x)
        mask[tuple(idx)] = 1
        return x, noisy, mask


def _resident(v: TrainVolume, device: str) -> TrainVolume:
    """``v`` with its arrays as float32 tensors on ``device`` (moved once, then sampled there)."""
    import dataclasses

    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, np.float32) if not torch.is_tensor(a) else a,  # noqa: E731
                                                          dtype=torch.float32).to(device)
    return dataclasses.replace(v, clean=t(v.clean), pair=t(v.pair), ct_noise=[t(n) for n in v.ct_noise])
