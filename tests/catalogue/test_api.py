"""The package's public surface: pinned ``__all__``, errors, and what importing it pulls in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import catalogue
from catalogue import errors

PACKAGE = Path(catalogue.__file__).parent


def test_public_api_is_pinned():
    assert catalogue.__all__ == [
        "Catalogue",
        "CatalogueEntry",
        "CatalogueError",
        "CatalogueStatus",
        "DEFAULT_BASE_MODEL",
        "HubListing",
        "HubSource",
        "HubTimeout",
        "HubUnavailable",
        "InvalidCatalogueConfig",
        "InvalidEntry",
        "InvalidSearch",
        "LocalSource",
        "LocalSourceError",
        "SORTS",
        "SearchIndex",
        "SearchPage",
        "SnapshotError",
        "caption",
        "describe_entry",
        "with_trigger_words",
    ]
    for name in catalogue.__all__:
        assert getattr(catalogue, name) is not None
    assert catalogue.DEFAULT_BASE_MODEL == "stabilityai/stable-diffusion-xl-base-1.0"
    assert catalogue.SORTS == ("downloads", "likes", "recent")


def test_errors_follow_the_tree():
    classes = [getattr(errors, n) for n in errors.__all__]
    kinds = [c.kind for c in classes]
    assert len(set(kinds)) == len(kinds)
    for cls in classes:
        assert issubclass(cls, errors.CatalogueError)
        doc = cls.__doc__.strip()
        assert "\n" not in doc and doc.startswith("Raised "), cls
        assert cls.__name__ in errors.__doc__
    assert issubclass(errors.InvalidSearch, ValueError) and issubclass(errors.HubUnavailable, ConnectionError)
    assert issubclass(errors.HubTimeout, TimeoutError) and issubclass(errors.LocalSourceError, OSError)
    assert set(errors.__all__) <= set(catalogue.__all__)


def test_import_pulls_in_neither_torch_nor_huggingface_hub():
    code = (
        "import sys, catalogue\n"
        "bad = [m for m in ('torch', 'diffusers', 'gradio', 'huggingface_hub') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_only_hub_module_imports_huggingface_hub():
    pattern = re.compile(r"^\s*(from|import)\s+huggingface_hub\b", re.MULTILINE)
    users = sorted(p.name for p in PACKAGE.glob("*.py") if pattern.search(p.read_text(encoding="utf-8")))
    assert users == ["hub.py"]


def test_no_blanket_exception_handlers():
    pattern = re.compile(r"except\s+Exception\b|except\s*:")
    assert not [p.name for p in PACKAGE.glob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
