"""How every benchmark ends: its one JSON object, to ``--out`` and to stdout (progress went to stderr)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, path: str | Path) -> None:
    """Write ``result`` as indented JSON to ``path`` (folders created) and print the same text."""
    text = json.dumps(result, indent=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    print(text)
