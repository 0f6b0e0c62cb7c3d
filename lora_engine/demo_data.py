"""The synthetic scenes the demo model is to be trained on: simple shapes, drawn deterministically.

What this is for: issue #8's dataset, "a {colour} {shape} on a {background} background" at 64 px, with
varied sizes and positions, reproducible from a seed, so a training script can make it and tests can judge
the trained model against the same vocabulary. Pure Pillow + stdlib: no torch.

What it is not for: training (a later script) or judging outputs (``tests/support/judge.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "Scene", "draw", "prompt_grid", "sample_scenes"]

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


def draw(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """Render ``scene`` as an RGB image of ``resolution`` pixels a side."""
    big = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    half = scene.size * big / 2
    cx, cy = scene.cx * big, scene.cy * big
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    elif scene.shape == "triangle":
        pen.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    else:
        raise ValueError(f"shape must be one of {SHAPES} but is {scene.shape!r}")
    return image.resize((resolution, resolution), Image.LANCZOS)


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
    """Every colour x shape x background once, centred at a middle size: the judge's prompt grid."""
    for colour in COLOURS:
        for shape in SHAPES:
            for background in BACKGROUNDS:
                yield Scene(colour, shape, background)
