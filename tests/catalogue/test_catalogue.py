"""The Catalogue facade: start without waiting on the Hub, background refresh, snapshot fallback, thumbnails."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalogue import (
    Catalogue,
    CatalogueStatus,
    InvalidCatalogueConfig,
    InvalidSearch,
    LocalSource,
    LocalSourceError,
    SearchPage,
)
from catalogue.snapshot import Snapshot, read_snapshot, save_snapshot, snapshot_path
from tests.catalogue.conftest import DEMO_BASE, SDXL, make_source, write_demo_lora
from tests.support.waiting import wait_until


@pytest.fixture
def local_sdxl(tmp_path) -> Path:
    root = tmp_path / "local"
    write_demo_lora(root, "me/my-own-style", "My Own Style", "my own style", "mine.safetensors", base_model=SDXL)
    return root


@pytest.fixture
def make(hub, tmp_path, local_sdxl):
    """Catalogue factory on the world; stops every catalogue and waits for abandoned listings."""
    made = []

    def _make(hub_kw=None, with_hub=True, **kw):
        source = make_source(hub.url, **(hub_kw or {})) if with_hub else None
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("local", LocalSource(local_sdxl))
        kw.setdefault("refresh_interval_s", 600)
        cat = Catalogue(base_model=SDXL, hub=source, **kw)
        made.append(cat)
        return cat

    yield _make
    for cat in made:
        cat.stop()
    hub.hub.reset()
    for cat in made:
        if cat.hub is not None:
            assert cat.hub.wait_idle(5)


def _old_snapshot(cache_dir: Path, hours: float = 1.0) -> Snapshot:
    """A snapshot of two real-looking entries, ``hours`` old."""
    from catalogue.entries import CatalogueEntry

    entries = tuple(
        CatalogueEntry(
            repo_id=f"snap/entry-{i}",
            title=f"Snapshot Entry {i}",
            trigger_words="snap",
            weight_name="s.safetensors",
            unservable_reason=None,
            thumbnail=None,
            downloads=100 - i,
            likes=i,
            last_modified="2023-01-01T00:00:00Z",
            license="mit",
            gated=None,
            tags=("lora",),
            base_models=(SDXL,),
            source="hub",
        )
        for i in range(2)
    )
    snap = Snapshot(SDXL, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours), entries)
    save_snapshot(snapshot_path(cache_dir, SDXL), snap)
    return snap


def test_start_serves_snapshot_and_local_at_once_while_the_hub_is_slow(hub, make, tmp_path):
    _old_snapshot(tmp_path / "cache")
    _old_snapshot(tmp_path / "patient")  # the same, for a first catalogue that goes live (and saves a new one)
    hub.hub.hold(r"^/api/models")  # the Hub answers no listing until released
    patient = make(hub_kw=dict(deadline_s=600), cache_dir=tmp_path / "patient")
    patient.start()
    # Had start() waited on the Hub, it would still be waiting (or have given up, with an error): it returned at
    # once, with the snapshot and the local entries, while its refresh asks the Hub in the background.
    st = patient.status()
    assert st.state == "snapshot" and st.last_error is None and st.entries == 3
    assert hub.hub.wait_held(1, timeout=60)
    hub.hub.release()
    wait_until(lambda: patient.status().state == "live", message="the background refresh to go live")
    patient.stop()

    # A Hub that does not answer within the deadline: the snapshot stays, and the error says why.
    hub.hub.hold(r"^/api/models")
    cat = make(hub_kw=dict(deadline_s=0.4))
    cat.start()
    st = cat.status()
    assert st.state == "snapshot" and st.entries == 3
    assert 3590 < st.snapshot_age_s < 3700 and st.refreshed_at is not None
    assert {e.repo_id for e in cat.entries} == {"me/my-own-style", "snap/entry-0", "snap/entry-1"}
    wait_until(lambda: cat.status().last_error is not None, message="the refresh to fail")
    st = cat.status()
    assert st.state == "snapshot" and "did not finish within 0.4 s" in st.last_error and st.entries == 3
    assert cat.search("snapshot").total == 2


def test_refresh_goes_live_saves_a_snapshot_and_a_cold_start_uses_it(hub, make, tmp_path):
    cat = make()
    assert cat.status().state == "local-only" and cat.status().entries == 0  # not started: nothing yet
    assert cat.refresh_now() is True
    st = cat.status()
    assert isinstance(st, CatalogueStatus)
    assert st.state == "live" and st.last_error is None and st.entries == len(hub.expected) + 1
    assert st.snapshot_age_s < 120  # just written (generous: a busy machine may take a while to get here)
    snap = read_snapshot(cat.snapshot_file, SDXL)
    assert {e.repo_id for e in snap.entries} == set(hub.expected)  # Hub entries only
    assert json.loads(cat.snapshot_file.read_text())["format_version"] == 1

    hub.hub.fail_status, hub.hub.fail_paths = 400, r"^/api/models"
    cold = make()
    cold.start()  # does not wait on the Hub (test_start_serves_snapshot_and_local_at_once_while_the_hub_is_slow)
    assert cold.status().state == "snapshot" and cold.status().entries == st.entries
    wait_until(lambda: cold.status().last_error is not None, message="the refresh to fail")
    st2 = cold.status()
    assert st2.state == "snapshot" and "400" in st2.last_error and st2.entries == st.entries
    assert cold.get("nerijs/pixel-art-xl") == cat.get("nerijs/pixel-art-xl")


def test_failing_hub_keeps_the_previous_entries_and_recovers(hub, make):
    cat = make()
    assert cat.refresh_now()
    before = cat.entries
    cat.hub.deadline_s = 0.5  # short, since the Hub will fail: the deadline decides when the refresh gives up
    hub.hub.fail_status, hub.hub.fail_paths = 500, r"^/api/models\?"
    assert cat.refresh_now() is False
    st = cat.status()
    # The client retries 5xx answers with backoff for far longer: the deadline ended the refresh.
    assert st.state == "snapshot" and "did not finish within 0.5 s" in st.last_error and st.snapshot_age_s is not None
    assert cat.entries == before and cat.search("pixel art").total > 0
    hub.hub.reset()
    assert cat.hub.wait_idle(60)
    cat.hub.deadline_s = 60.0  # the Hub is back: a deadline that a listing on a busy machine meets
    assert cat.refresh_now() is True
    assert cat.status().state == "live" and cat.status().last_error is None


def test_snapshot_thumbnails_follow_a_moved_endpoint(hub, make, tmp_path):
    old = _old_snapshot(tmp_path / "cache")
    moved = tuple(
        dataclasses.replace(e, thumbnail=f"http://old-host:1/{e.repo_id}/resolve/abc/a.png") for e in old.entries
    )
    moved = moved[:1] + (dataclasses.replace(moved[1], thumbnail="https://elsewhere.example/x.png"),)
    save_snapshot(snapshot_path(tmp_path / "cache", SDXL), Snapshot(SDXL, old.saved_at, moved, "http://old-host:1"))
    hub.hub.fail_status, hub.hub.fail_paths = 400, r"^/api/models"
    cat = make()
    cat.start()
    assert cat.get("snap/entry-0").thumbnail == f"{hub.url}/snap/entry-0/resolve/abc/a.png"
    assert cat.get("snap/entry-1").thumbnail == "https://elsewhere.example/x.png"


def test_without_a_snapshot_the_state_is_local_only_until_a_refresh_succeeds(hub, make, tmp_path):
    (tmp_path / "cache").mkdir()
    snapshot_path(tmp_path / "cache", SDXL).write_text("{corrupt")  # ignored with a warning, no crash
    hub.hub.fail_status, hub.hub.fail_paths = 503, r"^/api/models"
    cat = make(hub_kw=dict(deadline_s=0.3))
    cat.start()
    assert cat.status().state == "local-only" and [e.repo_id for e in cat.entries] == ["me/my-own-style"]
    wait_until(lambda: cat.status().last_error is not None, message="the refresh to fail")
    st = cat.status()
    assert st.state == "local-only" and st.refreshed_at is None and st.snapshot_age_s is None
    hub.hub.reset()
    assert cat.hub.wait_idle(60)
    cat.hub.deadline_s = 60.0  # the Hub is back: a deadline that a listing on a busy machine meets
    assert cat.refresh_now() and cat.status().state == "live"


def test_background_refresh_repeats_and_stop_ends_it(hub, make):
    cat = make(refresh_interval_s=0.15)
    before = set(threading.enumerate())
    cat.start()
    refresher = [t for t in set(threading.enumerate()) - before if t.name == "catalogue-refresh"]
    assert len(refresher) == 1
    wait_until(
        lambda: len(hub.hub.requests_matching("GET", r"^/api/models\?.*adapter")) >= 3,
        message="three background refreshes",
    )
    assert cat.status().state == "live"
    cat.stop()
    # Ended, not abandoned: the refresh thread is gone and no listing it started still runs, so nothing asks the Hub
    # any more (stop() also closed the thumbnail fetcher).
    assert not refresher[0].is_alive()
    assert cat.hub.wait_idle(60)


def test_local_only_catalogue_on_the_demo_layout(demo_loras, tmp_path):
    cat = Catalogue(base_model=DEMO_BASE, local=LocalSource(demo_loras), cache_dir=tmp_path / "c")
    cat.start()
    try:
        st = cat.status()
        assert (st.state, st.entries, st.last_error, st.snapshot_age_s) == ("local-only", 3, None, None)
        page = cat.search("pixel")
        assert isinstance(page, SearchPage) and [e.repo_id for e in page.entries] == ["demo/pixel-blocks"]
        api = cat.get("demo/neon-glow").as_api_dict()
        assert api["weight_name"] == "pytorch_lora_weights.safetensors" and api["trigger_words"] == "neon glow"
        assert Path(api["thumbnail"]).is_file()
        assert cat.thumbnail_file("demo/neon-glow") == Path(api["thumbnail"])  # local: the file itself, at once
        assert cat.refresh_now() is True
        assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("catalogue-*.json"))
    finally:
        cat.stop()


def test_search_and_get_through_the_facade(hub, make):
    cat = make()
    cat.refresh_now()
    page = cat.search("PIXEL art", sort="likes", limit=2)
    assert (page.query, page.sort, page.entries[0].repo_id) == ("PIXEL art", "likes", "nerijs/pixel-art-xl")
    styles = cat.search("style", limit=2, offset=1)
    assert styles.total > 3 and len(styles.entries) == 2 and styles.offset == 1
    # the local file was written just now; the newest Hub repo comes next
    assert [e.repo_id for e in cat.search(sort="recent", limit=2).entries] == [
        "me/my-own-style",
        "multi/dual-base-lora",
    ]
    assert cat.search(sort="downloads", limit=1).entries[0].repo_id == "latent-consistency/lcm-lora-sdxl"
    assert "minimaxir/sdxl-ugly-sonic-lora" not in {e.repo_id for e in cat.search("sonic", servable_only=True).entries}
    assert cat.get("nope/nothing") is None
    assert set(cat.get("nerijs/pixel-art-xl").as_api_dict()) == {
        "repo_id",
        "title",
        "trigger_words",
        "thumbnail",
        "downloads",
        "likes",
        "weight_name",
    }
    with pytest.raises(InvalidSearch, match="'popular'"):
        cat.search(sort="popular")


def test_local_entry_wins_a_repo_id_clash(hub, make, tmp_path):
    root = tmp_path / "clash"
    write_demo_lora(root, "nerijs/pixel-art-xl", "Local Pixel", "pixel art", "local.safetensors", base_model=SDXL)
    cat = make(local=LocalSource(root))
    cat.refresh_now()
    e = cat.get("nerijs/pixel-art-xl")
    assert e.source == "local" and e.weight_name == "local.safetensors"
    assert sum(x.repo_id == "nerijs/pixel-art-xl" for x in cat.entries) == 1


def test_reads_while_refreshing_see_whole_versions(hub, make):
    cat = make()
    cat.refresh_now()
    full = cat.status().entries
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            page = cat.search("", limit=1000)
            if page.total != len(page.entries):
                errors.append(page.total)
            seen.add(page.total)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            assert cat.refresh_now()
    finally:
        stop.set()
        thread.join()
    assert not errors and seen == {full}


def test_thumbnails_are_lazy_and_never_block(hub, make):
    cat = make()
    cat.refresh_now()
    placeholder = cat.placeholder_thumbnail()
    from PIL import Image

    with Image.open(placeholder) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    assert cat.placeholder_thumbnail() == placeholder
    hub.hub.hold(r"/resolve/")  # no download is answered until released
    # Had thumbnail_file awaited its download, it would still be waiting: it queues it and returns None.
    assert cat.thumbnail_file("nerijs/pixel-art-xl") is None
    assert cat.thumbnail_file("trainer/corgi-dreambooth") is None
    assert hub.hub.wait_held(1, timeout=60)
    hub.hub.release()
    assert cat.wait_thumbnails(60)
    path = cat.thumbnail_file("nerijs/pixel-art-xl")
    assert (
        path is not None
        and path.read_bytes() == (hub.root / "nerijs/pixel-art-xl/images/pixel-art-xl.jpeg").read_bytes()
    )
    assert cat.thumbnail_file("trainer/corgi-dreambooth").name == "image_0.png"
    gated = next(e.repo_id for e in cat.entries if e.gated)
    assert cat.thumbnail_file(gated) is None and cat.wait_thumbnails(10)
    n = len(hub.hub.requests)
    assert cat.thumbnail_file(gated) is None  # a failure is not retried at once
    assert cat.wait_thumbnails(1) and len(hub.hub.requests) == n
    assert cat.thumbnail_file("multi/dual-base-lora") is None  # has no thumbnail at all
    assert cat.thumbnail_file("me/my-own-style").name == "thumbnail.png"  # local
    assert cat.thumbnail_file("nope/nothing") is None


def test_missing_local_folder_fails_start(tmp_path):
    cat = Catalogue(base_model=SDXL, local=LocalSource(tmp_path / "missing"), cache_dir=tmp_path)
    with pytest.raises(LocalSourceError, match="does not exist"):
        cat.start()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(base_model=""), "`base_model` must be a model id"),
        (dict(base_model="has space/x"), "'has space/x'"),
        (dict(refresh_interval_s=0), "`refresh_interval_s` must be a number > 0 but is 0"),
        (dict(local=["not a source"]), "`local` must hold LocalSource objects"),
        (dict(hub="http://hub"), "`hub` must be a HubSource"),
        (dict(thumbnail_workers=0), "`thumbnail_workers` must be an integer >= 1 but is 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidCatalogueConfig, match=match):
        Catalogue(**kwargs)
