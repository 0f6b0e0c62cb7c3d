"""The synthetic scenes the demo model is to be trained on: simple shapes, drawn deterministically.

What this is for: the demo model's training set, "a {colour} {shape} on a {background} background" at 64 px, with
varied sizes and positions, reproducible from a seed, so a training script can make it and tests can judge
the trained model against the same vocabulary. Pure Pillow + stdlib: no torch.

Each scene can also be drawn with one of four *effects*, the looks the demo LoRAs learn: ``outline`` (the
shape's contour only), ``stripes`` (a striped background), ``inverted`` (every colour inverted) and
``pixelate`` (8-pixel blocks).

What it is not for: training (``scripts/train_demo_model.py``) or judging outputs (``lora_engine/demo/judge.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

__all__ = ["BACKGROUNDS", "COLOURS", "EFFECTS", "SHAPES", "Scene", "draw", "prompt_grid", "sample_scenes"]

#: RGB of each colour word; saturated and far apart in hue, so a judge can tell them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
RESOLUTION = 64
#: The looks a LoRA can learn, applied on top of a scene by :func:`draw`.
EFFECTS: tuple[str, ...] = ("outline", "stripes", "inverted", "pixelate")
#: Line width of ``outline`` and period of ``stripes``/blocks of ``pixelate``, in pixels at 64 px.
OUTLINE_WIDTH = 3
STRIPE_PERIOD = 8
BLOCK = 8
_STRIPE_GREY = (128, 128, 128)
# Drawn at 4x and downsampled: antialiased edges, like real images, instead of jagged ones.
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One picture: what is drawn, how big and where (fractions of the image side).

    Args:
        colour (`str`), shape (`str`), background (`str`): words from ``COLOURS``, ``SHAPES``, ``BACKGROUNDS``.
        size (`float`): the shape's extent, 0.3..0.7 of the side.
        cx (`float`), cy (`float`): its centre, kept so the shape stays inside the image.
    """

    colour: str
    shape: str
    background: str
    size: float = 0.5
    cx: float = 0.5
    cy: float = 0.5

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def draw(scene: Scene, resolution: int = RESOLUTION, effect: str | None = None) -> Image.Image:
    """Render ``scene`` as an RGB image of ``resolution`` pixels a side, with ``effect`` (one of ``EFFECTS``)."""
    if effect is not None and effect not in EFFECTS:
        raise ValueError(f"effect must be one of {EFFECTS} or None but is {effect!r}")
    big = resolution * _SUPERSAMPLE
    scale = big / RESOLUTION
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    if effect == "stripes":
        # Horizontal bands, half background colour and half mid grey: visible on white and on black. They
        # start a quarter period down, so no band edge lies on the 8-pixel grid that ``pixelate`` snaps to.
        period = STRIPE_PERIOD * scale
        y = period / 4
        while y < big:
            pen.rectangle((0, y, big, y + period / 2 - 1), fill=_STRIPE_GREY)
            y += period
    half = scene.size * big / 2
    cx, cy = scene.cx * big, scene.cy * big
    box = (cx - half, cy - half, cx + half, cy + half)
    colour = COLOURS[scene.colour]
    # ``outline`` draws the contour in the colour and leaves the inside to the background.
    fill, line, width = (None, colour, round(OUTLINE_WIDTH * scale)) if effect == "outline" else (colour, None, 0)
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill, outline=line, width=width)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill, outline=line, width=width)
    elif scene.shape == "triangle":
        corners = [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
        if line is None:
            pen.polygon(corners, fill=fill)
        else:
            pen.line([*corners, corners[0], corners[1]], fill=line, width=width, joint="curve")
    else:
        raise ValueError(f"shape must be one of {SHAPES} but is {scene.shape!r}")
    image = image.resize((resolution, resolution), Image.LANCZOS)
    if effect == "inverted":
        image = Image.eval(image, lambda v: 255 - v)
    elif effect == "pixelate":
        blocks = resolution // (BLOCK * resolution // RESOLUTION)
        image = image.resize((blocks, blocks), Image.BOX).resize((resolution, resolution), Image.NEAREST)
    return image


def sample_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes with random words, sizes and positions, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = rng.uniform(0.3, 0.7)
        margin = size / 2 + 0.02
        out.append(
            Scene(
                colour=rng.choice(list(COLOURS)),
                shape=rng.choice(SHAPES),
                background=rng.choice(list(BACKGROUNDS)),
                size=size,
                cx=rng.uniform(margin, 1 - margin),
                cy=rng.uniform(margin, 1 - margin),
            )
        )
    return out


def prompt_grid() -> Iterator[Scene]:
    """Every colour x shape x background once: the judge's prompt grid.

    The model only sees the caption; size and place matter for calibrating the judge on drawn scenes, and
    0.45 keeps a square's edges off the 8-pixel grid that ``pixelate`` snaps to.
    """
    for colour in COLOURS:
        for shape in SHAPES:
            for background in BACKGROUNDS:
                yield Scene(colour, shape, background, size=0.45)
