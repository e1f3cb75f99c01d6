"""Photometric augmentation of the two views (applied after warping, independently per image).

Two recipes of the original, re-created with torch/kornia on float images in [0, 1] (B, C, H, W):

``"silk"`` (the original's active config; albumentations on uint8 there). With probability 0.95, in order:
    gamma ``x ** g``, ``g ~ U(0.15, 0.65)`` (p 0.1); hue/saturation/value shift ``U(-20, 20)`` hue steps of 2
    degrees, saturation ``U(-30, 30)/255``, value ``U(-100, -40)/255`` (p 0.1); box blur with an odd kernel in
    [3, 9] (p 0.1); motion blur, odd kernel in [3, 25], random angle and direction (p 0.2); brightness/contrast
    ``x * (1 + U(-0.5, 0.3)) + U(-0.3, 0)`` (p 0.5); Gaussian noise with variance ``U(10, 50)/255^2`` per pixel
    and channel (p 0.5).
``"hpatches"`` (the original's alternative, noted "used for HPatches"): brightness ``+ U(-0.5, 0.5)``,
    contrast ``(x - mean) * U(0.5, 1.5) + mean``, Gaussian noise with ``std ~ U(0, 0.04)``, speckle (salt and
    pepper) noise with ``p ~ U(0, 0.0035)`` per side, clip to [0, 1]; then with probability 0.5 a 3-px motion
    blur at an angle ``U(0, 6.28)`` *degrees* (the original passes radians-looking bounds to a degrees API).
``"lighting"`` (ours, not in the original): ``"hpatches"`` after two changes of the light that real scenes
    show and neither recipe has, each with probability 0.5: a response curve ``x ** exp(U(-0.6, 0.6))`` and
    uneven lighting, an additive linear ramp of random direction, ``U(0.05, 0.3)`` at the middle of the edges
    (as SuperPoint's "additive shade").
``"none"``: no augmentation.

Differences from albumentations: float arithmetic instead of uint8 look-up tables (no intermediate rounding),
and kornia's motion-blur kernel (a line through the centre) instead of albumentations' random line.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.filters import box_blur, motion_blur


def augment(images: torch.Tensor, recipe: str = "silk", generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment each image of (B, C, H, W) float [0, 1] independently; returns a new tensor in [0, 1].

    All random draws come from ``generator`` (a CPU generator), in a fixed order, so runs are reproducible.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; available: {RECIPES}")
    if recipe == "none":
        return images
    fn = _RECIPES[recipe]
    return torch.cat([fn(img[None], _Draw(generator)) for img in images]).clamp_(0.0, 1.0)


class _Draw:
    """Random draws from one CPU generator."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.g = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.g))

    def chance(self, p: float) -> bool:
        return float(torch.rand((), generator=self.g)) < p

    def odd(self, low: int, high: int) -> int:
        return 2 * int(torch.randint(low // 2, high // 2 + 1, (), generator=self.g)) + 1

    def normal_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.g).to(x)

    def uniform_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape, generator=self.g).to(x)


def _hsv_shift(x: torch.Tensor, d: _Draw) -> torch.Tensor:
    hue, sat, val = d.uniform(-20, 20) * 2 * math.pi / 180, d.uniform(-30, 30) / 255, d.uniform(-100, -40) / 255
    if x.shape[1] != 3:
        return x + val
    hsv = rgb_to_hsv(x.clamp(0, 1))
    h = torch.remainder(hsv[:, :1] + hue, 2 * math.pi)
    s = (hsv[:, 1:2] + sat).clamp(0, 1)
    v = (hsv[:, 2:] + val).clamp(0, 1)
    return hsv_to_rgb(torch.cat([h, s, v], 1))


def _motion(x: torch.Tensor, kernel: int, angle: float, direction: float) -> torch.Tensor:
    return motion_blur(x, kernel, angle, direction, border_type="reflect")


def _silk(x: torch.Tensor, d: _Draw) -> torch.Tensor:
    if not d.chance(0.95):
        return x
    steps: list[tuple[float, Callable[[torch.Tensor], torch.Tensor]]] = [
        (0.1, lambda x: x.clamp(0, 1) ** d.uniform(0.15, 0.65)),
        (0.1, lambda x: _hsv_shift(x, d)),
        (0.1, lambda x: box_blur(x, d.odd(3, 9), border_type="reflect")),
        (0.2, lambda x: _motion(x, d.odd(3, 25), d.uniform(0, 360), d.uniform(-1, 1))),
        (0.5, lambda x: (x.clamp(0, 1) * (1 + d.uniform(-0.5, 0.3)) + d.uniform(-0.3, 0.0))),
        (0.5, lambda x: x + d.normal_like(x) * math.sqrt(d.uniform(10, 50)) / 255),
    ]
    for p, step in steps:
        if d.chance(p):
            x = step(x).clamp(0, 1)
    return x


def _hpatches(x: torch.Tensor, d: _Draw) -> torch.Tensor:
    x = (x + d.uniform(-0.5, 0.5)).clamp(0, 1)
    mean = x.mean(dim=(-1, -2, -3), keepdim=True)
    x = ((x - mean) * d.uniform(0.5, 1.5) + mean).clamp(0, 1)
    x = (x + d.normal_like(x) * d.uniform(0, 0.04)).clamp(0, 1)
    prob = d.uniform(0, 0.0035)
    u = d.uniform_like(x[:, :1]).expand_as(x)
    x = torch.where(u <= prob, torch.zeros_like(x), torch.where(u >= 1 - prob, torch.ones_like(x), x))
    if d.chance(0.5):
        x = _motion(x, 3, d.uniform(0, 6.28), 0.0)
    return x


def _lighting(x: torch.Tensor, d: _Draw) -> torch.Tensor:
    if d.chance(0.5):
        x = x.clamp(0, 1) ** math.exp(d.uniform(-0.6, 0.6))
    if d.chance(0.5):
        h, w = x.shape[-2:]
        angle, amplitude = d.uniform(0, 2 * math.pi), d.uniform(0.05, 0.3)
        ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device)[:, None]
        xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device)[None, :]
        x = (x + amplitude * (math.cos(angle) * xs + math.sin(angle) * ys)).clamp(0, 1)
    return _hpatches(x, d)


_RECIPES: dict[str, Callable[[torch.Tensor, _Draw], torch.Tensor]] = {
    "silk": _silk, "hpatches": _hpatches, "lighting": _lighting,
}
RECIPES = (*_RECIPES, "none")
