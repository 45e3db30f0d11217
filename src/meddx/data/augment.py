"""Preprocessing (scale + normalise) and batched, per-sample augmentation on tensors.

Why not ``torchvision.transforms.v2`` here: v2 transforms draw one set of random parameters per call,
so per-sample augmentation would mean a Python loop over images (or DataLoader workers that compete
with the 2 training cores). Instead each batch gets per-sample random affine matrices and one
``F.affine_grid`` + ``F.grid_sample`` call, which works for 2D and 3D alike. File inputs are still
resized with v2 (``meddx.data.images.resize_to``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F


@dataclass
class Normalization:
    """``x = (raw * scale - mean[c]) / std[c]``; stored in every checkpoint beside the weights."""

    scale: float
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, images: torch.Tensor, max_samples: int = 20000) -> Normalization:
        """Per-channel statistics of (a deterministic subset of) the training images."""
        scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        x = images[:max_samples].float() * scale
        dims = [0] + list(range(2, x.ndim))
        mean = x.mean(dim=dims)
        std = x.std(dim=dims).clamp_min(1e-6)
        return cls(scale=scale, mean=[float(m) for m in mean], std=[float(s) for s in std])

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        # one fused multiply-add: x * (scale / std) + (-mean / std), constants cached per device
        a, b = self._affine(raw.device, raw.ndim)
        return torch.addcmul(b, raw.float(), a)

    def _affine(self, device: torch.device, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), ndim)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            shape = (1, -1) + (1,) * (ndim - 2)
            std = torch.tensor(self.std, dtype=torch.float64)
            a = (self.scale / std).float().view(shape).to(device)
            b = (-torch.tensor(self.mean, dtype=torch.float64) / std).float().view(shape).to(device)
            cache[key] = (a, b)
        return cache[key]

    def to_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


@dataclass
class AugmentPolicy:
    """Ranges of the per-sample random affine transform; ``none`` turns it off."""

    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.08  # fraction of the image size
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False  # any multiple of 90 degrees (orientation-free images: pathology, cells)
    colour: str = "none"  # 3-channel images: "jitter" (brightness/contrast/saturation + a hue turn in YIQ space)
    # or "hed" (stain jitter in haematoxylin-eosin-DAB optical density, Tellez et al. 2018); none otherwise
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def scaled(self, strength: float) -> AugmentPolicy:
        """The same policy with rotation, scale and shift ranges multiplied by ``strength`` (flips unchanged;
        rotation capped at 180 degrees, shift at 0.25 of the image)."""
        lo, hi = self.scale
        return replace(self, rotate_deg=min(180.0, self.rotate_deg * strength),
                       scale=(1 - (1 - lo) * strength, 1 + (hi - 1) * strength),
                       translate=min(0.25, self.translate * strength))


# Chosen by modality: anatomy with a left/right (X-ray, CT, fundus) is never mirrored; microscopy and
# pathology have no orientation at all; ultrasound may be mirrored left/right.
POLICIES: dict[str, AugmentPolicy] = {
    "xray": AugmentPolicy(rotate_deg=10, hflip=False),
    "ct": AugmentPolicy(rotate_deg=10, hflip=False),
    "mra": AugmentPolicy(rotate_deg=10, hflip=False),
    # fundus: a mirrored left eye is a plausible right eye, and grades do not depend on the side
    "fundus": AugmentPolicy(rotate_deg=30, hflip=True, colour="jitter"),
    "oct": AugmentPolicy(rotate_deg=5, hflip=True),
    "ultrasound": AugmentPolicy(rotate_deg=10, hflip=True),
    "dermoscopy": AugmentPolicy(rotate_deg=180, hflip=True, vflip=True, colour="jitter"),
    "pathology": AugmentPolicy(rotate_deg=0, hflip=True, vflip=True, rot90=True, translate=0.05, colour="hed"),
    "microscopy": AugmentPolicy(rotate_deg=0, hflip=True, vflip=True, rot90=True, translate=0.05,
                                colour="jitter"),
    "generic": AugmentPolicy(),
    "none": AugmentPolicy(rotate_deg=0, scale=(1.0, 1.0), translate=0.0),
}


def policy_for(modality: str) -> AugmentPolicy:
    return POLICIES.get(modality, POLICIES["generic"])


def random_affine(x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent random affine transform to every sample of a (N, C, *spatial) float batch.

    Rotation is in the last two axes (the image plane, also for volumes); padding is by border value.
    """
    n, nd = x.shape[0], x.ndim - 2
    if policy == POLICIES["none"] or n == 0:
        return x
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator).to(dev) * (hi - lo) + lo

    theta = torch.zeros(n, nd, nd + 1, device=dev)
    ang = u(-policy.rotate_deg, policy.rotate_deg) * math.pi / 180
    if policy.rot90:
        ang = ang + torch.randint(0, 4, (n,), generator=generator).to(dev) * (math.pi / 2)
    s = 1.0 / u(*policy.scale)
    cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
    # affine_grid's axis order is (x, y[, z]): x = last axis. Rotate in the (x, y) plane.
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    if nd == 3:
        theta[:, 2, 2] = s
    for axis, flip in ((0, policy.hflip), (1, policy.vflip)):
        if flip:
            sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(dev)
            theta[:, :, axis] *= sign[:, None]
    if policy.translate:
        theta[:, :, nd] = (torch.rand(n, nd, generator=generator).to(dev) * 2 - 1) * 2 * policy.translate
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(raw: torch.Tensor, normalize: Normalization, policy: AugmentPolicy | None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Raw training images -> normalised, augmented batch: colour changes on [0, 1] values (3-channel images),
    then normalisation, then the random affine transform."""
    if policy is not None and policy.colour != "none" and raw.ndim == 4 and raw.shape[1] == 3:
        x01 = COLOUR[policy.colour](raw.float() * normalize.scale, generator)
        x = normalize(x01 / normalize.scale)
    else:
        x = normalize(raw)
    return random_affine(x, policy, generator) if policy is not None else x


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(device).view(n, 1, 1, 1)


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None = None, strength: float = 0.2,
                  hue_deg: float = 10.0) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation (factors 1 +- ``strength``) and hue (+- ``hue_deg``) of RGB
    images in [0, 1]. Written out because torchvision's functional ops take one factor per call (a Python loop
    over the batch); the formulas are torchvision's blends, the hue a rotation of the YIQ chroma plane."""
    n, dev = x.shape[0], x.device
    gray_w = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
    x = x * _uniform(n, 1 - strength, 1 + strength, generator, dev)
    gray = (x * gray_w).sum(1, keepdim=True)
    mean = gray.mean((2, 3), keepdim=True)
    x = (x - mean) * _uniform(n, 1 - strength, 1 + strength, generator, dev) + mean
    gray = (x * gray_w).sum(1, keepdim=True)
    x = (x - gray) * _uniform(n, 1 - strength, 1 + strength, generator, dev) + gray
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    ang = _uniform(n, -hue_deg, hue_deg, generator, dev).view(n, 1, 1) * math.pi / 180
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], i * torch.cos(ang) - q * torch.sin(ang), i * torch.sin(ang) + q * torch.cos(ang)], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def hed_jitter(x: torch.Tensor, generator: torch.Generator | None = None, sigma: float = 0.05) -> torch.Tensor:
    """Stain augmentation: scale and shift each of the haematoxylin, eosin and DAB concentrations by
    U(1 +- sigma) and U(+- sigma) ("HED-light", Tellez et al. 2018), with scikit-image's colour-deconvolution
    matrices and its ``separate_stains``/``combine_stains`` log scaling, batched in torch."""
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    n, dev = x.shape[0], x.device
    log_adjust = math.log(1e-6)
    to_hed = torch.as_tensor(hed_from_rgb, dtype=torch.float32, device=dev)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=torch.float32, device=dev)
    # no clamp at 0 (scikit-image's rgb2hed has one): unclamped, the round trip is exact for any colour
    hed = torch.einsum("nchw,cs->nshw", torch.log(x.clamp_min(1e-6)) / log_adjust, to_hed)
    alpha = (1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma).to(dev)
    beta = ((torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma).to(dev)
    hed = hed * alpha + beta
    return torch.exp(torch.einsum("nshw,sc->nchw", hed * log_adjust, to_rgb)).clamp(0, 1)


COLOUR = {"jitter": colour_jitter, "hed": hed_jitter}
