"""The config (read once, strict) and the public API surface (pinned)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import lora_engine
from lora_engine import ConfigError, EngineConfig


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
            "IncompatibleAdapter",
            "InvalidAdapterId",
            "InvalidRequest",
            "QueueFull",
            "RequestCancelled",
            "RequestFuture",
            "Timings",
            "UnsafeAdapterFile",
            "UnsupportedAdapterFormat",
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
        ({"LORA_ENGINE_MAX_QUEUE": "0"}, "LORA_ENGINE_MAX_QUEUE must be at least 1 but is 0"),
        ({"LORA_ENGINE_MAX_QUEUE": "lots"}, "LORA_ENGINE_MAX_QUEUE must be a int but is 'lots'"),
        ({"LORA_ENGINE_PREFETCH": "maybe"}, "LORA_ENGINE_PREFETCH must be a bool but is 'maybe'"),
        ({"LORA_ENGINE_MIN_SIDE": "60"}, "multiples of 8"),
        ({"LORA_ENGINE_SWAP_KERNEL": "triton"}, "LORA_ENGINE_SWAP_KERNEL must be one of auto, torch but is 'triton'"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_env(env)


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
