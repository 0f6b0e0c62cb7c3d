"""A judge of simple pictures by pixel statistics: background, dominant colour, shape, edge density.

For issue #8's tests: it tells whether an image shows "a {colour} {shape} on a {background} background",
using only numpy. It is calibrated on the training scenes themselves (``lora_engine.demo_data``), where it
must be right every time, before it is trusted to judge a model's outputs.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from lora_engine.demo_data import BACKGROUNDS, COLOURS

_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in COLOURS.items()}


@dataclass(frozen=True)
class Verdict:
    """What the judge sees.

    Args:
        background (`str`): the nearest background word, from the border pixels.
        colour (`str | None`): the nearest colour word by hue of the foreground; None without a foreground.
        shape (`str | None`): from the fill ratio of the foreground inside its bounding box.
        fill_ratio (`float`): foreground pixels / bounding-box pixels.
        foreground (`float`): the share of the image that is foreground.
        edge_density (`float`): the share of pixels on a strong luminance edge.
    """

    background: str
    colour: str | None
    shape: str | None
    fill_ratio: float
    foreground: float
    edge_density: float


def judge(image) -> Verdict:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg_rgb = border.mean(axis=0)
    background = min(BACKGROUNDS, key=lambda b: np.abs(np.array(BACKGROUNDS[b]) - bg_rgb).sum())
    mask = np.abs(rgb - bg_rgb).sum(axis=2) > 120
    luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(luminance)
    edge_density = float((np.hypot(gx, gy) > 40).mean())
    if mask.sum() < 12:
        return Verdict(background, None, None, 0.0, float(mask.mean()), edge_density)
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(mask.sum() / box)
    r, g, b = (rgb[mask].mean(axis=0) / 255).tolist()
    hue = colorsys.rgb_to_hsv(r, g, b)[0]
    colour = min(_HUES, key=lambda c: min(abs(_HUES[c] - hue), 1 - abs(_HUES[c] - hue)))
    # A square fills its box (1.0), a circle pi/4 (0.785), a triangle half of it (0.5).
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    return Verdict(background, colour, shape, fill, float(mask.mean()), edge_density)
