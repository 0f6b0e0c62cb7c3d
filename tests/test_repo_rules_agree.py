"""One table of LoRA repo shapes, run through the catalogue and the engine: listed as servable <=> served.

Each shape is published on a loopback Hub and, the same folders, read as local adapter folders. The
catalogue's side is a real ``HubSource`` listing (and ``LocalSource`` scan); the engine's side is a real
``AdapterFetcher.resolve`` against the same Hub (and the same folders). For every shape: an entry is listed
as servable exactly when the engine accepts the repo, and then both name the same file; a refusal the
catalogue lists carries the engine's reason; a repo the engine refuses as ``IncompatibleAdapter`` (not a
LoRA for this base) is not listed at all. The expected outcome of each shape is written in the table too, so
the table also documents the rules (``lora_engine.adapters.repo_rules``).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from catalogue import HubSource, LocalSource
from lora_engine.adapters.fetch import AdapterFetcher
from lora_engine.demo.model import DEMO_WEIGHTS_DIR
from lora_engine.errors import (
    AdapterError,
    AdapterNotFound,
    CorruptAdapter,
    IncompatibleAdapter,
    UnsafeAdapterFile,
    UnsupportedAdapterFormat,
)
from lora_engine.testing.loopback_hub import FakeHub, write_repo
from lora_engine.testing.lora_files import SD15, SDXL, lora_card

REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
DIFFUSERS = "pytorch_lora_weights.safetensors"
A, B = "a.safetensors", "b.safetensors"
DUMMY = b"never opened: choosing a file does not read it"


@dataclass(frozen=True)
class Shape:
    """One repo shape and what the rules make of it.

    Args:
        name (`str`): the repo is ``table/<name>``.
        files (`tuple[str, ...]`): its files (dummy bytes, or a real LoRA for ``real``).
        card (`dict`, *optional*): the README's front matter; None for no README.
        hub, local: the expected weight file, or the refusal's error class, on the Hub and as a local folder.
        readme (`bytes`, *optional*): the README's raw bytes instead of ``card``.
        real (`bool`): the files are a real LoRA, downloaded and parsed end to end.
    """

    name: str
    files: tuple[str, ...]
    card: dict | None
    hub: str | type[AdapterError]
    local: str | type[AdapterError]
    readme: bytes | None = None
    real: bool = False


def _ok(name: str) -> tuple[str, str]:
    return name, name


SHAPES = [
    Shape("one-file", ("lora.safetensors",), lora_card(), *_ok("lora.safetensors")),
    Shape("two-unnamed", (A, B), lora_card(), AdapterNotFound, AdapterNotFound),
    Shape("two-weight-name", (A, B), lora_card(weight_name=A), *_ok(A)),
    Shape("two-named-in-widget", (A, B), lora_card(widget_text="made with b.safetensors"), *_ok(B)),
    Shape(
        "kohya-reference",
        ("style-v1.safetensors", "style-v2.safetensors"),
        lora_card(trigger="<lora:style-v2:0.8> neon"),
        *_ok("style-v2.safetensors"),
    ),
    Shape("diffusers-default-name", (A, DIFFUSERS), lora_card(), *_ok(DIFFUSERS)),
    Shape(
        "checkpoint-sub-folder",
        ("final.safetensors", "checkpoint-500/final.safetensors"),
        lora_card(),
        *_ok("final.safetensors"),
    ),
    Shape("sub-folder", ("sub/lora.safetensors",), lora_card(), *_ok("sub/lora.safetensors"), real=True),
    Shape("upper-case-suffix", ("lora.SAFETENSORS",), lora_card(), *_ok("lora.SAFETENSORS"), real=True),
    Shape("bin-only", ("pytorch_lora_weights.bin",), lora_card(), UnsafeAdapterFile, UnsafeAdapterFile),
    Shape(
        "embeddings-beside",
        ("lora.safetensors", "embeddings.safetensors"),
        lora_card(),
        UnsupportedAdapterFormat,
        UnsupportedAdapterFormat,
    ),
    Shape(
        "pti-beside", ("lora.safetensors", "emb.pti"), lora_card(), UnsupportedAdapterFormat, UnsupportedAdapterFormat
    ),
    Shape(
        "full-model-components",
        ("unet/diffusion_pytorch_model.safetensors",),
        lora_card(),
        AdapterNotFound,
        AdapterNotFound,
    ),
    Shape("list-valued-base-model", ("w.safetensors",), lora_card(base_model=[REFINER, SDXL]), *_ok("w.safetensors")),
    Shape(
        "base-model-only-in-tags",
        ("w.safetensors",),
        {"tags": ["lora", f"base_model:adapter:{SDXL}"]},
        *_ok("w.safetensors"),
    ),
    Shape(
        "another-base-model", ("w.safetensors",), lora_card(base_model=SD15), IncompatibleAdapter, IncompatibleAdapter
    ),
    # Local folders were put there by the operator: neither a lora tag nor a base_model (nor a card) is needed.
    Shape(
        "not-tagged-lora", ("w.safetensors",), lora_card(tags=["text-to-image"]), IncompatibleAdapter, "w.safetensors"
    ),
    Shape("no-base-model", ("w.safetensors",), {"tags": ["lora"]}, IncompatibleAdapter, "w.safetensors"),
    Shape("no-card", ("w.safetensors",), None, IncompatibleAdapter, "w.safetensors"),
    Shape(
        "readme-not-utf8",
        ("w.safetensors",),
        None,
        "w.safetensors",  # the Hub reads it as best it can; a local card that is not text is refused
        CorruptAdapter,
        readme=f"---\ntags: [lora]\nbase_model: {SDXL}\n---\n# Caf\xe9\n".encode("latin-1"),
    ),
    Shape("hidden-folder", ("w.safetensors", ".git/old.safetensors"), lora_card(), *_ok("w.safetensors")),
    # Hostile card values: the wrong type counts as absent.
    Shape("tags-5", ("w.safetensors",), {"tags": 5, "base_model": SDXL}, IncompatibleAdapter, "w.safetensors"),
    Shape(
        "tags-5-hub-says-lora",
        ("w.safetensors",),
        {"tags": 5, "base_model": SDXL, "library_name": "lora", "base_model_relation": "adapter"},
        *_ok("w.safetensors"),
    ),
    Shape(
        "base-model-mapping", ("w.safetensors",), lora_card(base_model={"a": 1}), IncompatibleAdapter, "w.safetensors"
    ),
    Shape(
        "base-model-mapping-tags-name-ours",
        ("w.safetensors",),
        lora_card(base_model={"a": 1}, tags=["lora", f"base_model:adapter:{SDXL}"]),
        *_ok("w.safetensors"),
    ),
    Shape("widget-7", (A, B), lora_card(widget=7, weight_name=B), *_ok(B)),
    Shape(
        "instance-prompt-mappings",
        ("w.safetensors",),
        lora_card(trigger=None, instance_prompt=[{"x": 1}]),
        *_ok("w.safetensors"),
    ),
    Shape("weight-name-null", (A, DIFFUSERS), lora_card(weight_name=None), *_ok(DIFFUSERS)),
    Shape("weight-name-mappings", (A, B), lora_card(weight_name=[{"x": 1}]), AdapterNotFound, AdapterNotFound),
    Shape("weight-name-int-one-file", ("w.safetensors",), lora_card(weight_name=7), *_ok("w.safetensors")),
]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The table published on a loopback Hub of its own; its folders double as a local adapters root."""
    root = tmp_path_factory.mktemp("repo-rules-table")
    # A real LoRA for the demo model, as shipped (no need to lay out the demo assets for its bytes).
    real = (DEMO_WEIGHTS_DIR / "loras" / "demo" / "pixel-blocks" / "pixel-blocks-xl.safetensors").read_bytes()
    for shape in SHAPES:
        files = {f: (real if shape.real else DUMMY) for f in shape.files}
        folder = write_repo(root, f"table/{shape.name}", files, card=shape.card, downloads=1)
        if shape.readme is not None:
            (folder / "README.md").write_bytes(shape.readme)
    server = FakeHub(root)
    server.start()
    hub_cache = tmp_path_factory.mktemp("repo-rules-hf")
    try:
        yield types.SimpleNamespace(
            root=root,
            url=server.url,
            hub_entries={
                e.repo_id: e
                for e in HubSource(endpoint=server.url, token=False, timeout_s=5, deadline_s=60).fetch(SDXL).entries
            },
            local_entries={e.repo_id: e for e in LocalSource(root).load(SDXL)},
            hub_fetcher=AdapterFetcher(
                accepted_base_models=(SDXL,), endpoint=server.url, token=False, cache_dir=str(hub_cache), timeout_s=5
            ),
            local_fetcher=AdapterFetcher(accepted_base_models=(SDXL,), local_dirs=(root,)),
        )
    finally:
        server.stop()


def _engine(fetcher: AdapterFetcher, repo_id: str) -> str | AdapterError:
    try:
        return fetcher.resolve(repo_id).weight_name
    except AdapterError as e:
        return e


def _check(entry, engine: str | AdapterError, expected: str | type[AdapterError]) -> None:
    # The rules, as the table states them.
    if isinstance(expected, str):
        assert engine == expected
    else:
        assert type(engine) is expected, engine
    # The agreement: listed as servable <=> served, with the same file; a listed refusal says the engine's reason.
    assert (entry is not None and entry.servable) == isinstance(engine, str)
    if isinstance(engine, str):
        assert entry.weight_name == engine
    elif isinstance(engine, IncompatibleAdapter):
        assert entry is None  # not a LoRA for this base: not listed at all
    else:
        assert entry is not None and entry.unservable_reason == engine.reason


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_hub_listing_and_engine_agree(table, shape):
    repo_id = f"table/{shape.name}"
    _check(table.hub_entries.get(repo_id), _engine(table.hub_fetcher, repo_id), shape.hub)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_local_folders_and_engine_agree(table, shape):
    repo_id = f"table/{shape.name}"
    _check(table.local_entries.get(repo_id), _engine(table.local_fetcher, repo_id), shape.local)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s.real], ids=lambda s: s.name)
def test_the_chosen_file_is_downloaded_and_parsed(table, shape):
    from lora_engine.adapters.parse import load_adapter_file

    repo_id = f"table/{shape.name}"
    for fetcher in (table.hub_fetcher, table.local_fetcher):
        source = fetcher.fetch(repo_id)
        assert source.key.weight_name == shape.hub and source.path.name == Path(shape.hub).name
        tensors, _ = load_adapter_file(repo_id, source.path, max_bytes=fetcher.max_bytes)
        assert any(k.endswith("lora_down.weight") for k in tensors)
    assert source.origin == "local"
