"""Snapshot files (catalogue.snapshot): versioned JSON, atomic writes, bad files ignored."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from catalogue import SnapshotError
from catalogue.entries import CatalogueEntry
from catalogue.snapshot import FORMAT_VERSION, Snapshot, load_snapshot, read_snapshot, save_snapshot, snapshot_path
from tests.catalogue.conftest import SDXL

pytestmark = pytest.mark.pure

WHEN = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def _entries():
    return tuple(
        CatalogueEntry(
            repo_id=f"o/lora-{i}",
            title=f"LoRA {i}",
            trigger_words="tw" if i else None,
            weight_name="w.safetensors" if i % 2 else None,
            unservable_reason=None if i % 2 else "only pickle weights",
            thumbnail=f"http://h/o/lora-{i}/resolve/abc/a.png",
            downloads=i * 10,
            likes=i,
            last_modified=None,
            license="mit",
            gated="auto" if i == 3 else None,
            tags=("lora", f"base_model:adapter:{SDXL}"),
            base_models=(SDXL, "x/y") if i == 2 else (SDXL,),
            source="hub",
            revision="a" * 40,
        )
        for i in range(5)
    )


def test_round_trip(tmp_path):
    path = snapshot_path(tmp_path / "cache", SDXL)
    assert path.name == "catalogue-stabilityai--stable-diffusion-xl-base-1.0.json"
    snap = Snapshot(SDXL, WHEN, _entries(), endpoint="http://h")
    save_snapshot(path, snap)
    raw = json.loads(path.read_text())
    assert raw["format_version"] == FORMAT_VERSION == 1 and raw["saved_at"] == "2024-05-01T12:00:00Z"
    assert raw["endpoint"] == "http://h"
    assert raw["base_model"] == SDXL and len(raw["entries"]) == 5
    assert read_snapshot(path, SDXL) == snap == load_snapshot(path, SDXL)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_overwrite_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = snapshot_path(tmp_path, SDXL)
    save_snapshot(path, Snapshot(SDXL, WHEN, _entries()))
    before = path.read_bytes()

    def broken_dump(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_snapshot(path, Snapshot(SDXL, WHEN, ()))
    assert path.read_bytes() == before  # the old snapshot is intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        (
            json.dumps({"format_version": 2, "saved_at": "2024-05-01T12:00:00Z", "base_model": SDXL, "entries": []}),
            "format_version 2",
        ),
        (
            json.dumps(
                {"format_version": 1, "saved_at": "2024-05-01T12:00:00Z", "base_model": "other/base", "entries": []}
            ),
            "is for base model 'other/base'",
        ),
        (json.dumps({"format_version": 1, "saved_at": "yesterday", "base_model": SDXL, "entries": []}), "saved_at"),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "saved_at": "2024-05-01T12:00:00Z",
                    "base_model": SDXL,
                    "entries": [{"repo_id": "o/x"}],
                }
            ),
            "bad entry",
        ),
        (b"\xff\xfe\x00garbage", "cannot read"),
    ],
)
def test_bad_files_raise_when_read_and_are_ignored_with_a_warning_when_loaded(tmp_path, caplog, content, match):
    path = snapshot_path(tmp_path, SDXL)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(SnapshotError, match=match) as e:
        read_snapshot(path, SDXL)
    assert e.value.path == str(path)
    with caplog.at_level(logging.WARNING, logger="catalogue.snapshot"):
        assert load_snapshot(path, SDXL) is None
    assert any("ignoring the catalogue snapshot" in r.getMessage() for r in caplog.records)


def test_missing_file_is_silently_none(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_snapshot(tmp_path / "nope.json", SDXL) is None
    assert not caplog.records
