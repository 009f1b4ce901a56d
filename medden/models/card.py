"""Saved models: weights in safetensors plus a JSON model card, and loading them back with clear errors.

A model is two files side by side, ``NAME.safetensors`` (the network's tensors only: no pickled code) and
``NAME.json``, the card: architecture and its configuration, version, modality, the intensity normalisation the
network expects, the noise range it was trained on and the training record (data with licences, command, curves).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medden.conventions import CT_HU_PER_UNIT, give_normal_permissions, sha256_file
from medden.errors import ModelError  # noqa: F401  (raised here, and re-exported by medden.models)

CARD_FORMAT = 1
#: The licence of weights whose card records none: medden trains and ships its models under its own licence.
DEFAULT_WEIGHTS_LICENCE = "Apache-2.0"
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: Shipped models: registry method name → weights file name in ``WEIGHTS_DIR``.
SHIPPED = {"deep-mr": "medden_mr_rician_unet.safetensors", "deep-ct": "medden_ct_lowdose_unet.safetensors"}
#: The shipped diffusion prior (MR), and the prior per modality (modalities without their own use the MR prior).
SHIPPED_PRIOR = "medden_diffusion_mr_prior.safetensors"
SHIPPED_PRIORS = {"MR": SHIPPED_PRIOR, "CT": "medden_diffusion_ct_prior.safetensors"}


@dataclass(frozen=True)
class Normalisation:
    """How voxel values map to the network's units: ``u = (x − offset) / scale`` (:meth:`apply`), back by
    :meth:`invert`; a noise level maps by the scale alone (:meth:`apply_sigma`).

    ``kind="percentile"``: ``offset = 0`` and ``scale`` is the ``percentile`` of the non-zero |voxels| of the input
    itself (MR: makes the model scale-equivariant, ``denoise(a·x) = a·denoise(x)``); :meth:`fitted` computes them.
    ``kind="fixed"``: the given ``offset`` and ``scale`` (CT: Hounsfield units are absolute, see
    :data:`CT_NORMALISATION` and :data:`CT_PRIOR_NORMALISATION`). The same object serves training (the card records
    it) and inference (the card is read back), so the two cannot disagree.

    Examples
    --------
    >>> import numpy as np
    >>> norm = Normalisation("percentile", 50.0).fitted(np.array([0.0, 2.0, 4.0, 6.0]))
    >>> norm.kind, norm.scale, float(norm.apply(np.float32(6.0))), norm.apply_sigma(0.4)
    ('fixed', 4.0, 1.5, 0.1)
    """

    kind: str = "percentile"
    percentile: float = 99.9
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("percentile", "fixed"):
            raise ModelError(f"unknown normalisation kind {self.kind!r} (use 'percentile' or 'fixed')")
        for name in ("percentile", "offset", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ModelError(f"normalisation {name} must be a finite number, got {value!r}")
        if not 0 < self.percentile <= 100:
            raise ModelError(f"normalisation percentile must be in (0, 100], got {self.percentile}")
        if not self.scale > 0:
            raise ModelError(f"normalisation scale must be > 0, got {self.scale}")

    def fitted(self, data, *, shift_negative: bool = False) -> "Normalisation":
        """The normalisation for ``data``: a ``fixed`` one with this one's offset and scale, or, for a
        ``percentile`` one, ``offset 0`` and ``scale`` the percentile of the non-zero |voxels| (1 when all are
        zero). ``shift_negative`` (the diffusion prior, whose units start at the background): data with negative
        values get ``offset = max(min, −1024)`` (air) and the percentile of ``|x − offset|``."""
        import numpy as np

        from medden.conventions import nonzero_percentile

        if self.kind == "fixed":
            return self
        x = np.asarray(data)
        offset = 0.0
        if shift_negative and x.size:
            flat = x.reshape(-1)
            lowest = float((flat[:: flat.size // 2_000_000] if flat.size > 4_000_000 else flat).min())
            offset = 0.0 if lowest >= 0 else max(lowest, -1024.0)
        scale = nonzero_percentile(x - offset if offset else x, self.percentile)
        return Normalisation("fixed", self.percentile, offset, scale if scale > 0 else 1.0)

    def apply(self, x):
        """Data units → network units, ``(x − offset) / scale`` (NumPy arrays, tensors or numbers)."""
        return (x - self.offset) / self.scale

    def invert(self, u):
        """Network units → data units, ``u·scale + offset``."""
        out = u * self.scale
        out += self.offset
        return out

    def apply_sigma(self, sigma):
        """A noise standard deviation (or noise map) in data units → network units: ``σ / scale``."""
        return sigma / self.scale


#: CT U-Nets: ``HU / 1000`` (:data:`medden.conventions.CT_HU_PER_UNIT`).
CT_NORMALISATION = Normalisation("fixed", offset=0.0, scale=CT_HU_PER_UNIT)
#: CT diffusion prior: its units ``z = 2·(HU − offset)/scale − 1`` are the same ``HU / 1000``.
CT_PRIOR_NORMALISATION = Normalisation("fixed", offset=-CT_HU_PER_UNIT, scale=2 * CT_HU_PER_UNIT)
#: MR networks: the 99.9th percentile of the scan's non-zero voxels.
MR_NORMALISATION = Normalisation("percentile", 99.9)


@dataclass
class ModelCard:
    """What a weights file is and how it was made."""

    name: str
    architecture: str
    config: dict[str, Any]
    modality: str
    normalisation: Normalisation
    version: str = "1.0.0"
    noise: dict[str, Any] = field(default_factory=dict)  # model and trained range, e.g. {"model": "rician", ...}
    training: dict[str, Any] = field(default_factory=dict)  # data (with licences), command, steps, wall time, curves
    sha256: str = ""
    format: int = CARD_FORMAT
    licence: str = ""  # of the weights; empty: medden's own, Apache-2.0 (see DEFAULT_WEIGHTS_LICENCE)
    changelog: dict[str, str] = field(default_factory=dict)  # version → what changed (the bundle's metadata repeats it)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        try:
            d = dict(d)
            norm = d.get("normalisation", {})
            if not isinstance(norm, dict):
                raise ModelError(f"model card normalisation must be an object, got {norm!r}")
            d["normalisation"] = Normalisation(**norm)
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise ModelError(f"model card is missing a field or has a wrong one: {exc}") from None

    def __post_init__(self) -> None:
        if not isinstance(self.config, dict):
            raise ModelError(f"model card config must be an object, got {self.config!r}")
        for key, value in self.config.items():
            _check_config_value(key, value)


#: The largest integer a network configuration may hold (channels, steps ...): beyond it a card is not a real model.
MAX_CONFIG_INT = 100_000


def _check_config_value(key: str, value: Any) -> None:
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_config_value(key, v)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if not 0 <= value <= MAX_CONFIG_INT:
            raise ModelError(f"model card config {key!r} holds {value}, outside [0, {MAX_CONFIG_INT}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ModelError(f"model card config {key!r} holds a non-finite number ({value})")
    else:
        raise ModelError(f"model card config {key!r} holds {value!r}, not a number, text or list")


def shipped_path(name: str) -> Path:
    """Path of a shipped model's weights file (which may be absent in a source checkout without weights)."""
    import medden.models  # WEIGHTS_DIR read at call time (tests point it elsewhere)

    try:
        return medden.models.WEIGHTS_DIR / SHIPPED[name]
    except KeyError:
        raise ModelError(f"no shipped model {name!r} (known: {', '.join(SHIPPED)})") from None


def shipped_prior_path(modality: str = "MR") -> Path:
    """Where the shipped diffusion prior for ``modality`` lives: its own when shipped (CT), else the MR prior (the file
    may be absent in a checkout without weights)."""
    import medden.models  # WEIGHTS_DIR read at call time (tests point it elsewhere)

    weights_dir = medden.models.WEIGHTS_DIR
    own = weights_dir / SHIPPED_PRIORS.get(str(modality).upper(), SHIPPED_PRIOR)
    return own if own.is_file() else weights_dir / SHIPPED_PRIOR


def prior_available(path: str | Path | None = None) -> bool:
    """True when the diffusion prior's weights (default: the shipped MR prior) and their card exist."""
    p = Path(path) if path else shipped_prior_path()
    return p.is_file() and p.with_suffix(".json").is_file()


def card_licence(path: str | Path) -> str:
    """The licence of the weights at ``path`` as their card records it (:data:`DEFAULT_WEIGHTS_LICENCE` when the card
    names none or cannot be read). Reads the JSON only: no network library is imported."""
    try:
        licence = json.loads(Path(path).with_suffix(".json").read_text()).get("licence")
    except (OSError, ValueError, AttributeError):
        licence = None
    return str(licence) if licence else DEFAULT_WEIGHTS_LICENCE


def save_model(net, card: ModelCard, path: str | Path) -> Path:
    """Write ``net``'s tensors to ``path`` (``.safetensors``) and ``card`` beside it (``.json``); returns the
    weights path. The card records the weights' SHA-256."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"architecture": card.architecture, "name": card.name})
    give_normal_permissions(path)  # safetensors writes 0600; weights are shared like any file the user writes
    card.architecture = getattr(net, "architecture", card.architecture)
    card.config = dict(net.config)
    card.sha256 = sha256_file(path)
    path.with_suffix(".json").write_text(card.to_json() + "\n")
    return path


def read_card(path: str | Path) -> ModelCard:
    """The card beside a weights file (``NAME.json`` for ``NAME.safetensors``)."""
    card_path = Path(path).with_suffix(".json")
    if not card_path.is_file():
        raise ModelError(f"model card {card_path} not found (every weights file needs its JSON card)")
    try:
        return ModelCard.from_dict(json.loads(card_path.read_text()))
    except json.JSONDecodeError as exc:
        raise ModelError(f"model card {card_path} is not valid JSON: {exc}") from None


def load_model(path: str | Path, device: str = "cpu", expect_architecture: str | None = None):
    """Load a saved model: returns ``(network in eval mode on device, card)``.

    Raises :class:`ModelError` when the file is missing or corrupt, when its tensors do not match the card's
    architecture, or when ``expect_architecture`` is given and differs.
    """
    from medden.models.networks import build_network

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    card = read_card(path)
    if expect_architecture and card.architecture != expect_architecture:
        raise ModelError(f"{path} holds a {card.architecture} model, not the expected {expect_architecture}")
    try:
        net = build_network(card.architecture, **card.config)
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise ModelError(f"{path}: the card's config {card.config} does not build a {card.architecture} network "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    load_weights_into(net, path, card)
    return net.to(device).eval(), card


def load_weights_into(net, path: Path, card: ModelCard) -> dict:
    """Read the safetensors file ``path`` into ``net`` (strict); a file whose SHA-256 differs from the card's, a
    corrupt file or weights of another architecture raise :class:`ModelError`. Returns the state dict read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if card.sha256 and sha256_file(path) != card.sha256:
        raise ModelError(f"weights file {path} does not match its card (SHA-256 differs from the card's "
                         f"{card.sha256[:12]}…): the file was changed or corrupted; restore it or re-export the model")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"weights file {path} is corrupt or not a safetensors file ({exc})") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"weights in {path} do not fit a {card.architecture} network with config {card.config} "
                         f"(another architecture's weights?): {first}") from None
    return state
