"""A judge of simple pictures by pixel statistics: background, dominant colour, shape, edge density.

For the demo model's tests (``tests/test_demo_judge.py``): it tells whether an image shows "a {colour} {shape} on a
{background} background", using only numpy. It is calibrated on the training scenes themselves
(``lora_engine.demo.data``), where it must be right every time, before it is trusted to judge a model's outputs.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .data import BACKGROUNDS, COLOURS

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


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def has_effect(image, effect: str, scene) -> bool:
    """Whether ``image``, drawn for ``scene``'s prompt, shows ``effect`` (one of ``demo.data.EFFECTS``).

    Each test reads one statistic that the effect moves far and a plain picture leaves alone:
    ``outline``: the middle of the shape's bounding box is background, not colour;
    ``stripes``: the left and right border columns alternate between two levels many times;
    ``inverted``: the background is the other one, and the shape's hue is nearer the inverted colour's than the asked
    one's;
    ``pixelate``: nearly all of the picture's variance lies between 8-pixel blocks, hardly any inside them.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if effect == "outline":
        verdict = judge(image)
        if verdict.colour is None:
            return False
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=0)
        mask = np.abs(rgb - border).sum(axis=2) > 120
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        h, w = y1 - y0, x1 - x0
        # The central fifth of the box: inside every filled shape (the triangle's too), off every contour.
        core = mask[y0 + 2 * h // 5 : y1 - 2 * h // 5, x0 + 2 * w // 5 : x1 - 2 * w // 5]
        return core.size > 0 and float(core.mean()) < 0.3
    if effect == "stripes":
        for column in (rgb[:, 0], rgb[:, -1]):
            lum = _luminance(column)
            if lum.max() - lum.min() < 60:
                return False
            levels = lum > (lum.max() + lum.min()) / 2
            if int(np.count_nonzero(levels[1:] != levels[:-1])) < 6:
                return False
        return True
    if effect == "inverted":
        verdict = judge(image)
        flipped = "black" if scene.background == "white" else "white"
        if verdict.background != flipped or verdict.colour is None:
            return False
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=0)
        mask = np.abs(rgb - border).sum(axis=2) > 120
        r, g, b = (rgb[mask].mean(axis=0) / 255).tolist()
        inverted = [1 - c / 255 for c in COLOURS[scene.colour]]
        hue = colorsys.rgb_to_hsv(r, g, b)[0]
        # Nearer the inverted colour's hue than the asked one's (the VAE drifts cyan towards blue a little).
        return _hue_distance(hue, colorsys.rgb_to_hsv(*inverted)[0]) < _hue_distance(hue, _HUES[scene.colour])
    if effect == "pixelate":
        # The share of the picture's variance left inside 8 x 8 blocks once each block's mean is taken
        # out: 0 for drawn blocks, < 0.08 after the VAE's blur, >= 0.1 for any plain scene (measured on
        # drawn and VAE-decoded scenes alike).
        size = rgb.shape[0] // 8
        blocks = rgb.reshape(size, 8, size, 8, 3)
        within = float(((blocks - blocks.mean(axis=(1, 3), keepdims=True)) ** 2).sum())
        total = float(((rgb - rgb.mean(axis=(0, 1))) ** 2).sum())
        return total > 0 and within < 0.08 * total
    raise ValueError(f"effect must be one of outline, stripes, inverted, pixelate but is {effect!r}")
