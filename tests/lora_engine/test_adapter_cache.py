"""``lora_engine.adapter_cache`` alone: the byte-bounded LRU's decisions and the adapter key; no engine, no torch.

The tiers as the engine uses them (disk/RAM/device) are tested in ``test_cache.py``.
"""

from __future__ import annotations

import pytest

from lora_engine.adapter_cache import AdapterKey, ByteLRU

pytestmark = pytest.mark.pure


def test_lru_evicts_least_recently_used_by_bytes():
    lru = ByteLRU(100)
    assert lru.put("a", 1, 40) == []
    assert lru.put("b", 2, 40) == []
    assert lru.get("a") == 1  # a is now the most recent
    assert lru.put("c", 3, 40) == ["b"]
    assert lru.keys() == ["a", "c"] and lru.bytes == 80
    assert lru.put("d", 4, 100) == ["a", "c"]
    assert lru.stats().evictions == 3 and lru.bytes == 100


def test_lru_never_evicts_the_pinned_entry_and_refuses_what_cannot_fit():
    lru = ByteLRU(100)
    lru.put("active", 1, 60)
    lru.pin("active")
    lru.put("x", 2, 30)
    assert lru.put("y", 3, 30) == ["x"]
    assert "active" in lru
    assert lru.put("huge", 4, 50) == ["huge"]  # 60 pinned + 50 > 100: not kept, nothing else flushed
    assert "huge" not in lru and "y" in lru
    with pytest.raises(ValueError, match="-1"):
        lru.put("neg", 0, -1)


def test_lru_replacing_a_key_updates_bytes_and_counts_hits():
    lru = ByteLRU(10)
    lru.put("k", 1, 4)
    lru.put("k", 2, 6)
    assert lru.bytes == 6 and lru.get("k") == 2 and lru.get("nope") is None
    s = lru.stats()
    assert (s.hits, s.misses, s.entries) == (1, 1, 1)


def test_adapter_key_names_repo_file_and_revision():
    key = AdapterKey("nerijs/pixel-art-xl", "pixel-art-xl.safetensors", "a" * 40)
    assert str(key) == "nerijs/pixel-art-xl/pixel-art-xl.safetensors@aaaaaaaaaaaa"
