"""Every refusal: a typed error naming the adapter and the rule, the base untouched, the next request fine.

The adapters come from the loopback Hub, as repos with real card shapes; the weights are real files for
the tiny UNet, made hostile in one way each.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_engine import (
    AdapterGated,
    AdapterNotFound,
    CorruptAdapter,
    IncompatibleAdapter,
    InvalidAdapterId,
    UnsafeAdapterFile,
    UnsupportedAdapterFormat,
)
from lora_engine.demo.model import DEMO_LORAS
from lora_engine.testing.lora_files import (
    SD15,
    absurd_header_file,
    evil_pickle,
    loha_file,
    lokr_file,
    lora_card,
    publish,
    read_tensors,
    to_bytes,
)
from tests.lora_engine.conftest import fast, pixels

KOHYA = next(s for s in DEMO_LORAS if s.key_format == "kohya")
PEFT = next(s for s in DEMO_LORAS if s.key_format == "peft" and s.text_encoder_rank)


@pytest.fixture(scope="module")
def kohya_tensors(demo_assets):
    return read_tensors(demo_assets.lora_dir(KOHYA.repo_id) / KOHYA.weight_name)


@pytest.fixture(scope="module")
def kohya_bytes(demo_assets):
    return (demo_assets.lora_dir(KOHYA.repo_id) / KOHYA.weight_name).read_bytes()


@pytest.fixture(scope="module")
def good_repo(hub_root, kohya_bytes):
    publish(hub_root, "nerijs/pixel-art-xl", {"pixel-art-xl.safetensors": kohya_bytes}, downloads=17058, likes=134)
    return "nerijs/pixel-art-xl"


@pytest.fixture
def base_pixels(hub_engine):
    return pixels(hub_engine.generate(fast()))


def assert_refused_cleanly(engine, adapter_id, error_type, match, base):
    """The request fails with ``error_type``; base weights and the next requests are as if nothing happened."""
    with pytest.raises(error_type, match=match) as info:
        engine.generate(fast(lora=adapter_id))
    assert info.value.adapter_id == adapter_id
    assert adapter_id in str(info.value)
    assert engine.backend.swapper.active is None or engine.backend.swapper.active.adapter_id != adapter_id
    assert np.array_equal(pixels(engine.generate(fast())), base)
    assert engine.current_digest() == engine.base_digest
    return info.value


def test_a_good_hub_lora_works(hub_engine, good_repo, base_pixels, fake_hub):
    first = hub_engine.generate(fast(lora=good_repo))
    assert first.cache_tier == "hub"
    assert first.adapter_revision == fake_hub.sha(good_repo)
    assert not np.array_equal(pixels(first), base_pixels)


@pytest.mark.parametrize(
    "bad_id",
    [
        "../etc/passwd",
        "/abs/path",
        "owner/../name",
        "https://evil.example/owner/name",
        "owner/name/extra",
        "owner",
        "a--b/c",
        "C:\\x\\y",
        "~/.ssh/x",
        "owner/name..",
    ],
)
def test_ids_that_are_not_repo_ids_are_refused_at_submit(hub_engine, bad_id, fake_hub):
    with pytest.raises(InvalidAdapterId, match="repo id"):
        hub_engine.submit(fast(lora=bad_id))
    assert fake_hub.requests == []  # refused before anything touched the network


def test_pickle_is_never_opened(hub_engine, hub_root, tmp_path, base_pixels):
    marker = tmp_path / "UNPICKLED"
    publish(hub_root, "evil/pickle-lora", {"pytorch_lora_weights.bin": evil_pickle(marker)})
    publish(hub_root, "evil/ckpt-lora", {"model.ckpt": evil_pickle(marker)})
    assert_refused_cleanly(hub_engine, "evil/pickle-lora", UnsafeAdapterFile, "pickle", base_pixels)
    assert_refused_cleanly(hub_engine, "evil/ckpt-lora", UnsafeAdapterFile, "pickle", base_pixels)
    assert not marker.exists()


def test_lycoris_formats_are_refused_clearly(hub_engine, hub_root, kohya_tensors, base_pixels):
    publish(hub_root, "lyco/loha-style", {"loha.safetensors": loha_file(kohya_tensors)})
    publish(hub_root, "lyco/lokr-style", {"lokr.safetensors": lokr_file(kohya_tensors)})
    assert_refused_cleanly(hub_engine, "lyco/loha-style", UnsupportedAdapterFormat, "LoHa", base_pixels)
    assert_refused_cleanly(hub_engine, "lyco/lokr-style", UnsupportedAdapterFormat, "LoKr", base_pixels)


def test_truncated_and_absurd_headers_are_refused(hub_engine, hub_root, kohya_bytes, base_pixels):
    publish(hub_root, "broken/truncated", {"lora.safetensors": kohya_bytes[: len(kohya_bytes) // 2]})
    publish(hub_root, "broken/absurd-header", {"lora.safetensors": absurd_header_file(kohya_bytes)})
    publish(hub_root, "broken/not-even-a-header", {"lora.safetensors": b"\xff" * 7})
    assert_refused_cleanly(hub_engine, "broken/truncated", CorruptAdapter, "data bytes|header", base_pixels)
    assert_refused_cleanly(hub_engine, "broken/absurd-header", CorruptAdapter, "declares", base_pixels)
    assert_refused_cleanly(hub_engine, "broken/not-even-a-header", CorruptAdapter, "too short", base_pixels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_refused(hub_engine, hub_root, kohya_tensors, base_pixels, bad):
    poisoned = dict(kohya_tensors)
    key = next(k for k in poisoned if k.endswith("lora_up.weight"))
    poisoned[key] = poisoned[key].clone()
    poisoned[key][0, 0] = bad
    repo = f"poison/{'nan' if bad != bad else 'inf'}-lora"
    publish(hub_root, repo, {"lora.safetensors": to_bytes(poisoned)})
    assert_refused_cleanly(hub_engine, repo, CorruptAdapter, "NaN or inf", base_pixels)


def test_shapes_for_another_architecture_are_refused(hub_engine, hub_root, kohya_tensors, base_pixels):
    wrong = {}
    for k, v in kohya_tensors.items():
        if k.endswith("lora_down.weight") and "lora_unet_" in k:
            v = torch.zeros(v.shape[0], v.shape[1] * 2)  # e.g. a 1280-wide layer where ours is 640
        wrong[k] = v
    publish(hub_root, "other/wrong-shapes", {"lora.safetensors": to_bytes(wrong)})
    extra = dict(kohya_tensors)
    extra["lora_unet_input_blocks_99_1_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.zeros(4, 64)
    extra["lora_unet_input_blocks_99_1_transformer_blocks_0_attn1_to_q.lora_up.weight"] = torch.zeros(64, 4)
    publish(hub_root, "other/extra-layers", {"lora.safetensors": to_bytes(extra)})
    assert_refused_cleanly(hub_engine, "other/wrong-shapes", IncompatibleAdapter, "another architecture", base_pixels)
    assert_refused_cleanly(
        hub_engine, "other/extra-layers", IncompatibleAdapter, "another architecture|map", base_pixels
    )


def test_a_lora_for_another_base_model_is_refused(hub_engine, hub_root, kohya_bytes, base_pixels):
    publish(hub_root, "sd15/some-lora", {"lora.safetensors": kohya_bytes}, card=lora_card(base_model=SD15))
    err = assert_refused_cleanly(hub_engine, "sd15/some-lora", IncompatibleAdapter, "not for", base_pixels)
    assert SD15 in str(err)


def test_list_valued_base_model_is_accepted(hub_engine, hub_root, kohya_bytes, base_pixels):
    card = lora_card(
        base_model=["stabilityai/stable-diffusion-xl-refiner-1.0", "stabilityai/stable-diffusion-xl-base-1.0"]
    )
    publish(hub_root, "multi/dual-base", {"dual.safetensors": kohya_bytes}, card=card)
    assert not np.array_equal(pixels(hub_engine.generate(fast(lora="multi/dual-base"))), base_pixels)


@pytest.mark.parametrize("weight_name", ["sub/lora.safetensors", "lora.SAFETENSORS"])
def test_a_lora_in_a_sub_folder_or_with_an_upper_case_suffix_is_served(
    hub_engine, hub_root, kohya_bytes, base_pixels, weight_name
):
    # The catalogue lists these as servable (repo_rules): the engine must download, parse and apply them.
    repo = "layout/sub-folder" if "/" in weight_name else "layout/upper-case"
    publish(hub_root, repo, {weight_name: kohya_bytes, "README.txt": "notes"})
    result = hub_engine.generate(fast(lora=repo))
    assert not np.array_equal(pixels(result), base_pixels)
    assert hub_engine.fetcher.resolve(repo).weight_name == weight_name


def test_a_pivotal_tuning_lora_is_refused_not_served_without_its_embeddings(
    hub_engine, hub_root, kohya_bytes, base_pixels, fake_hub
):
    publish(hub_root, "pti/with-embeddings", {"lora.safetensors": kohya_bytes, "embeddings.pti": b"EMB"})
    err = assert_refused_cleanly(
        hub_engine, "pti/with-embeddings", UnsupportedAdapterFormat, "pivotal-tuning LoRA", base_pixels
    )
    assert "embeddings.pti" in str(err) and "does not load yet" in str(err)
    assert not fake_hub.requests_matching("GET", "with-embeddings/resolve")  # refused before any download


@pytest.mark.parametrize(
    ("repo", "card"),
    [
        ("hostile/tags-int", {"tags": 5, "base_model": "stabilityai/stable-diffusion-xl-base-1.0"}),
        ("hostile/base-model-mapping", {"tags": "lora", "base_model": {"a": 1}}),
        (
            "hostile/lists-of-mappings",
            {"tags": [{"x": 1}], "base_model": [{"y": 2}], "widget": 7, "instance_prompt": [{"x": 1}]},
        ),
    ],
)
def test_a_hostile_card_is_a_typed_refusal_not_a_crash(hub_engine, hub_root, kohya_bytes, base_pixels, repo, card):
    # huggingface_hub's own ModelInfo raises TypeError on `tags: 5`; the engine reads the card by type instead.
    publish(hub_root, repo, {"lora.safetensors": kohya_bytes}, card=card)
    assert_refused_cleanly(hub_engine, repo, IncompatibleAdapter, "LoRA", base_pixels)


def test_a_hostile_card_with_usable_tags_is_served(hub_engine, hub_root, kohya_bytes, base_pixels):
    card = {
        "tags": 5,
        "library_name": "lora",  # the Hub's tags say LoRA, the card's cannot
        "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
        "base_model_relation": "adapter",
        "weight_name": None,
        "widget": 7,
    }
    publish(hub_root, "hostile/but-usable", {"lora.safetensors": kohya_bytes}, card=card)
    assert not np.array_equal(pixels(hub_engine.generate(fast(lora="hostile/but-usable"))), base_pixels)


def test_a_repo_that_is_not_a_lora_is_refused(hub_engine, hub_root, kohya_bytes, base_pixels):
    publish(
        hub_root,
        "plain/checkpoint",
        {"model.safetensors": kohya_bytes},
        card={"license": "mit", "tags": ["text-to-image"], "base_model": "stabilityai/stable-diffusion-xl-base-1.0"},
    )
    assert_refused_cleanly(hub_engine, "plain/checkpoint", IncompatibleAdapter, "LoRA", base_pixels)


def test_unknown_gated_and_missing_revision(hub_engine, hub_root, kohya_bytes, base_pixels):
    publish(hub_root, "gatedorg/gated-lora", {"gated.safetensors": kohya_bytes}, gated="auto")
    assert_refused_cleanly(hub_engine, "nobody/does-not-exist", AdapterNotFound, "no such repo", base_pixels)
    assert_refused_cleanly(hub_engine, "gatedorg/gated-lora", AdapterGated, "gated", base_pixels)


def test_file_over_the_size_cap_is_refused_before_download(hub_engine, hub_root, kohya_bytes, base_pixels, fake_hub):
    publish(hub_root, "big/huge-lora", {"huge.safetensors": kohya_bytes})
    cap = hub_engine.fetcher.max_bytes
    hub_engine.fetcher.max_bytes = len(kohya_bytes) - 1
    try:
        assert_refused_cleanly(hub_engine, "big/huge-lora", UnsafeAdapterFile, "size cap", base_pixels)
    finally:
        hub_engine.fetcher.max_bytes = cap
    assert not fake_hub.requests_matching("GET", "huge.safetensors")


def test_verdicts_are_cached_per_revision(hub_engine, hub_root, kohya_tensors, base_pixels, fake_hub):
    poisoned = {k: (v * float("nan") if k.endswith("lora_up.weight") else v) for k, v in kohya_tensors.items()}
    publish(hub_root, "poison/cached-verdict", {"lora.safetensors": to_bytes(poisoned)})
    for _ in range(3):
        with pytest.raises(CorruptAdapter):
            hub_engine.generate(fast(lora="poison/cached-verdict"))
    # One download; the second and third refusals came from the remembered verdict.
    assert len(fake_hub.requests_matching("GET", "cached-verdict/resolve")) == 1
