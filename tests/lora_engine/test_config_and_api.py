"""The config (read once, strict) and the public API surface (pinned)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

import lora_engine
from lora_engine import ConfigError, EngineConfig
from lora_engine.backend_info import BackendInfo
from lora_engine.request import RequestLimits


def test_public_api_is_pinned():
    assert sorted(lora_engine.__all__) == sorted(
        [
            "BASE_ADAPTER",
            "SDXL_BASE_MODEL_ID",
            "AdapterError",
            "AdapterFetchError",
            "AdapterGated",
            "AdapterNotFound",
            "ConfigError",
            "CorruptAdapter",
            "Engine",
            "EngineClosed",
            "EngineConfig",
            "EngineError",
            "EngineStatus",
            "GenerationRequest",
            "GenerationResult",
            "ImageService",
            "IncompatibleAdapter",
            "InlineImageService",
            "InvalidAdapterId",
            "InvalidRequest",
            "Kind",
            "QueueFull",
            "Refusal",
            "RepoVerdict",
            "RequestCancelled",
            "RequestFuture",
            "Settings",
            "Timings",
            "UnsafeAdapterFile",
            "UnsupportedAdapterFormat",
            "assess_repo",
            "setting",
        ]
    )
    for name in lora_engine.__all__:
        assert hasattr(lora_engine, name)


def test_importing_the_engine_imports_no_torch():
    code = (
        "import lora_engine, lora_engine.scheduler, lora_engine.adapter_cache, lora_engine.demo.data, sys; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_from_env_reads_every_kind_of_field():
    c = EngineConfig.from_env(
        {
            "MODEL_ID": "stabilityai/stable-diffusion-xl-base-1.0",
            "LORA_ENGINE_RAM_CACHE_BYTES": "512MiB",
            "LORA_ENGINE_PREFETCH": "off",
            "LORA_ENGINE_MAX_WAIT_S": "2.5",
            "LORA_ENGINE_LOCAL_LORA_DIRS": "a, b",
        }
    )
    assert c.model_id == "stabilityai/stable-diffusion-xl-base-1.0"
    assert c.ram_cache_bytes == 512 << 20 and c.prefetch is False and c.max_wait_s == 2.5
    assert c.local_lora_dirs == ("a", "b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LORA_ENGINE_DTYPE": "fp8"}, "LORA_ENGINE_DTYPE must be one of .* but is 'fp8'"),
        (
            {"LORA_ENGINE_MAX_QUEUE": "0"},
            r"`max_queue` \(LORA_ENGINE_MAX_QUEUE, --max-queue\) must be at least 1 but is 0",
        ),
        ({"LORA_ENGINE_MAX_QUEUE": "lots"}, "LORA_ENGINE_MAX_QUEUE must be an integer but is 'lots'"),
        ({"LORA_ENGINE_PREFETCH": "maybe"}, "LORA_ENGINE_PREFETCH must be a boolean .* but is 'maybe'"),
        (
            {"LORA_ENGINE_RAM_CACHE_BYTES": "4GB!"},
            "LORA_ENGINE_RAM_CACHE_BYTES must be a size in bytes .* but is '4GB!'",
        ),
        ({"LORA_ENGINE_HUB_TIMEOUT_S": "-1"}, r"`hub_timeout_s` \(LORA_ENGINE_HUB_TIMEOUT_S, .*\) must be at least 0"),
        ({"LORA_ENGINE_MIN_SIDE": "60"}, "multiples of 8"),
        ({"LORA_ENGINE_SWAP_KERNEL": "triton"}, "LORA_ENGINE_SWAP_KERNEL must be one of auto, torch but is 'triton'"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_env(env)


def test_every_field_is_a_setting_with_its_own_variable_and_flag():
    declared = EngineConfig.declared_settings()
    assert [s.field_name for s in declared] == [f.name for f in fields(EngineConfig)]
    envs = [s.env for s in declared]
    assert len(set(envs)) == len(envs) and {"MODEL_ID", "BASE_MODEL_ID"} <= set(envs)
    assert all(e.startswith("LORA_ENGINE_") for e in envs if e not in ("MODEL_ID", "BASE_MODEL_ID"))
    assert all(s.flag == "--" + s.field_name.replace("_", "-") for s in declared)


def test_durations_and_sizes_read_with_units():
    c = EngineConfig.from_env({"LORA_ENGINE_HUB_TIMEOUT_S": "1m", "LORA_ENGINE_MAX_ADAPTER_BYTES": "1.5GiB"})
    assert (c.hub_timeout_s, c.max_adapter_bytes) == (60.0, 3 << 29)
    assert EngineConfig.from_env({"LORA_ENGINE_DTYPE": "BFloat16"}).dtype == "bfloat16"


def test_request_limits_are_defined_once():
    # Each RequestLimits field is an EngineConfig field of the same name; unset (None) ones fit the model.
    limit_fields = [f.name for f in fields(RequestLimits)]
    assert set(limit_fields) <= {f.name for f in fields(EngineConfig)}
    for name in limit_fields:
        assert getattr(EngineConfig(), name) in (getattr(RequestLimits(), name), None), name
    assert RequestLimits.for_model(EngineConfig(), is_demo=False) == RequestLimits()
    demo = RequestLimits.for_model(EngineConfig(), is_demo=True)
    assert (demo.default_steps, demo.default_side) == (12, 64) and demo.max_steps == RequestLimits().max_steps
    set_all = {"min_side": 128, "max_side": 512, "max_steps": 7, "max_prompt_chars": 10, "default_steps": 3}
    set_all |= {"default_side": 256, "default_guidance": 1.5}
    assert set(set_all) == set(limit_fields)
    assert RequestLimits.for_model(EngineConfig(**set_all), is_demo=True) == RequestLimits(**set_all)


def test_backend_info_carries_the_limits():
    config = EngineConfig(default_steps=4, max_side=1024, extra_base_models=("b/c",))
    info = BackendInfo.describe(
        config, model_id="m", base_model_id="a/b", device="cpu", dtype="torch.float32", is_demo=True
    )
    assert info.limits == RequestLimits(default_steps=4, default_side=64, max_side=1024)
    assert (info.accepted_base_models, info.dtype) == (("a/b", "b/c"), "float32")


def test_cli_flags_override_the_environment_and_document_it():
    parser = argparse.ArgumentParser()
    EngineConfig.add_arguments(parser)
    assert "[env: LORA_ENGINE_MAX_QUEUE] [default: 64]" in parser.format_help()
    args = parser.parse_args(["--max-queue", "3", "--model-id", "x/y"])
    c = EngineConfig.from_args(args, environ={"LORA_ENGINE_MAX_QUEUE": "9", "MODEL_ID": "a/b"})
    assert (c.max_queue, c.model_id) == (3, "x/y")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        EngineConfig().max_queue = 3  # type: ignore[misc]
