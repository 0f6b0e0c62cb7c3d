"""The local source (catalogue.local) on a demo-style folder built in tmp (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogue import LocalSource, LocalSourceError
from tests.catalogue.conftest import DEMO_BASE, PNG, SDXL, write_demo_lora

pytestmark = pytest.mark.pure


def test_reads_the_demo_layout(demo_loras):
    entries = LocalSource(demo_loras).load(DEMO_BASE)
    assert [e.repo_id for e in entries] == ["demo/ink-sketch", "demo/neon-glow", "demo/pixel-blocks"]
    neon = entries[1]
    assert neon.source == "local" and neon.local_dir == str(demo_loras / "demo" / "neon-glow")
    assert neon.title == "Neon Glow"  # the card body's first heading
    assert neon.trigger_words == "neon glow"
    assert neon.weight_name == "pytorch_lora_weights.safetensors" and neon.servable
    assert Path(neon.thumbnail) == (demo_loras / "demo" / "neon-glow" / "thumbnail.png").resolve()
    assert neon.license == "apache-2.0" and neon.base_models == (DEMO_BASE,) and "lora" in neon.tags
    assert (neon.downloads, neon.likes, neon.gated, neon.revision) == (0, 0, None, None)
    assert neon.last_modified and neon.last_modified.endswith("Z")
    assert entries[2].weight_name == "pixel-blocks-xl.safetensors"


def test_other_base_excluded_no_card_kept_hidden_files_skipped(tmp_path):
    root = tmp_path / "loras"
    write_demo_lora(root, "demo/mine", "Mine", "mine", "mine.safetensors")
    write_demo_lora(root, "demo/sd15-thing", "SD15", "old", "old.safetensors", base_model="runwayml/sd-v1-5")
    write_demo_lora(root, "demo/both", "Both", "both", "both.safetensors", base_model=[SDXL, DEMO_BASE])
    bare = root / "someone" / "no-card_lora"
    bare.mkdir(parents=True)
    (bare / "weights.safetensors").write_bytes(b"W")
    (bare / "preview.jpg").write_bytes(PNG)
    (bare / ".hub.json").write_text("{}")
    (root / "someone" / "empty").mkdir()
    (root / ".cache" / "x").mkdir(parents=True)
    entries = {e.repo_id: e for e in LocalSource(root).load(DEMO_BASE)}
    assert set(entries) == {"demo/mine", "demo/both", "someone/no-card_lora"}
    nc = entries["someone/no-card_lora"]
    assert nc.title == "No Card LoRA" and nc.trigger_words is None and nc.weight_name == "weights.safetensors"
    assert nc.thumbnail == str((bare / "preview.jpg").resolve()) and nc.base_models == ()
    assert set(e.repo_id for e in LocalSource(root).load(SDXL)) == {"demo/both", "someone/no-card_lora"}


def test_thumbnail_may_not_point_outside_its_folder(tmp_path):
    root = tmp_path / "loras"
    (tmp_path / "secret.png").write_bytes(PNG)
    folder = write_demo_lora(root, "demo/evil", "Evil", "evil", "e.safetensors", thumbnail="../../../secret.png")
    (folder / "thumbnail.png").unlink()
    (entry,) = LocalSource(root).load(DEMO_BASE)
    assert entry.thumbnail is None  # a path that is not one of the folder's files is never used
    (folder / "thumbnail.png").symlink_to(tmp_path / "secret.png")
    (entry,) = LocalSource(root).load(DEMO_BASE)
    assert entry.thumbnail is None  # nor a link leading out of it


def test_missing_root_is_a_typed_error(tmp_path):
    with pytest.raises(LocalSourceError, match="does not exist") as e:
        LocalSource(tmp_path / "nope").load(DEMO_BASE)
    assert isinstance(e.value, OSError) and e.value.root == str(tmp_path / "nope")


def test_hostile_or_unreadable_cards_never_stop_the_scan(tmp_path):
    root = tmp_path / "loras"
    write_demo_lora(root, "demo/mine", "Mine", "mine", "mine.safetensors")
    hostile = root / "odd" / "tags-five"
    hostile.mkdir(parents=True)
    (hostile / "README.md").write_text(
        "---\ntags: 5\nbase_model: {a: 1}\nwidget: 7\ninstance_prompt: [{x: 1}]\nweight_name: null\n---\n# Odd\n",
        encoding="utf-8",
    )
    (hostile / "w.safetensors").write_bytes(b"W")
    latin = root / "odd" / "latin-1-card"
    latin.mkdir(parents=True)
    (latin / "README.md").write_bytes("---\ntags: [lora]\n---\n# Caf\xe9\n".encode("latin-1"))
    (latin / "w.safetensors").write_bytes(b"W")
    entries = {e.repo_id: e for e in LocalSource(root).load(DEMO_BASE)}
    assert set(entries) == {"demo/mine", "odd/tags-five", "odd/latin-1-card"}
    odd = entries["odd/tags-five"]  # every wrong-typed value counts as absent: a local card needs none of them
    assert (odd.weight_name, odd.title, odd.trigger_words, odd.base_models, odd.tags) == (
        "w.safetensors",
        "Odd",
        None,
        (),
        (),
    )
    bad = entries["odd/latin-1-card"]  # listed, not servable, with the reason
    assert not bad.servable and "README.md is not UTF-8 text" in bad.unservable_reason
    assert bad.title == "Latin 1 Card"


def test_a_local_card_without_lora_tag_is_kept_and_one_for_another_base_is_left_out(tmp_path):
    root = tmp_path / "loras"
    plain = root / "me" / "plain-card"
    plain.mkdir(parents=True)
    (plain / "README.md").write_text("---\nlicense: mit\n---\n# Plain\n", encoding="utf-8")
    (plain / "sub").mkdir()
    (plain / "sub" / "lora.SAFETENSORS").write_bytes(b"W")
    other = root / "me" / "tagged-other"
    other.mkdir(parents=True)
    (other / "README.md").write_text("---\ntags: [lora, 'base_model:adapter:x/other']\n---\n", encoding="utf-8")
    (other / "w.safetensors").write_bytes(b"W")
    (entry,) = LocalSource(root).load(DEMO_BASE)
    assert entry.repo_id == "me/plain-card" and entry.weight_name == "sub/lora.SAFETENSORS"
