"""Where the shared, real-world SDXL LoRA facts live, for fixtures modelled on real repos.

The file sits in ``shared/`` beside the checkout (``../shared`` from the repo root), in development and in
CI alike; it is read from there and never copied into the project.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_CANDIDATES = (REPO_ROOT.parent / "shared" / "catalogue_facts.json", Path("/work/shared/catalogue_facts.json"))


def catalogue_facts_path() -> Path:
    for path in _CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(f"catalogue_facts.json not found in any of {[str(p) for p in _CANDIDATES]}")


def load_catalogue_facts() -> dict:
    return json.loads(catalogue_facts_path().read_text(encoding="utf-8"))
