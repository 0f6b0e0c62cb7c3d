"""How app.py reads its settings (one machinery for all of them, each documented once in ``--help``) and what
it imports (only what the packages export). Nothing here starts an engine."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from huggingface_hub import constants as hub_constants

import app
from app import AppConfig
from lora_engine import ConfigError, EngineConfig
from lora_engine.serving import ClusterConfig, DeploymentSpec
from tests.support.facts import REPO_ROOT

CONFIG_CLASSES = (AppConfig, EngineConfig, ClusterConfig, DeploymentSpec)


@pytest.fixture(scope="module")
def help_text() -> str:
    # argparse wraps help at the terminal's width, breaking at spaces and hyphens; a wide one keeps lines whole.
    env = {**os.environ, "COLUMNS": "1000"}
    command = [sys.executable, "app.py", "--help"]
    out = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True, timeout=120)
    return " ".join(out.stdout.split())


def test_help_shows_every_setting_exactly_once_with_its_variable_and_default(help_text):
    settings = [s for cls in CONFIG_CLASSES for s in cls.declared_settings()]
    assert len(settings) == 44  # 6 app + 27 engine + 5 cluster + 6 deployment: a lost class would show here
    for cls in CONFIG_CLASSES:
        defaults = cls()
        for s in cls.declared_settings():
            # The variable's name once, as a whole word: the setting's own line, and nowhere else.
            assert len(re.findall(rf"(?<![A-Z_]){s.env}(?![A-Z_])", help_text)) == 1, s.env
            shown = s.show(getattr(defaults, s.field_name))
            assert f"{s.flag} " in help_text and f"[env: {s.env}] [default: {shown}] {s.help}" in help_text, s.env
    assert help_text.count("[env: ") == len(settings)
    envs = [s.env for s in settings]
    assert len(set(envs)) == len(envs)


def test_defaults_are_unchanged(help_text):
    for text in (
        "[env: GRADIO_SERVER_NAME] [default: 127.0.0.1]",
        "[env: GRADIO_SERVER_PORT] [default: 7860]",
        "[env: CATALOGUE_REFRESH_S] [default: 3600]",
        "[env: CATALOGUE_NO_HUB] [default: false]",
        "[env: LOG_LEVEL] [default: INFO]",
        "[env: SPACES_ZERO_GPU] [default: false]",
        "[env: LORA_ENGINE_RAM_CACHE_BYTES] [default: 4GiB]",
        "[env: LORA_ENGINE_MAX_QUEUE] [default: 64]",
        "[env: LORA_RAY_MAX_QUEUED_REQUESTS] [default: --max-queue]",
        "[env: LORA_RAY_GPUS_PER_REPLICA] [default: auto]",
    ):
        assert text in help_text, text
    assert AppConfig.from_env({}) == AppConfig(
        server_name="127.0.0.1",
        server_port=7860,
        catalogue_refresh_s=3600.0,
        no_hub_catalogue=False,
        log_level="INFO",
        zero_gpu=False,
    )


def test_app_settings_read_like_every_other():
    env = {
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": "8080",
        "CATALOGUE_REFRESH_S": "10m",
        "CATALOGUE_NO_HUB": "yes",
        "LOG_LEVEL": "debug",
        "SPACES_ZERO_GPU": "true",
    }
    assert AppConfig.from_env(env) == AppConfig("0.0.0.0", 8080, 600.0, True, "DEBUG", True)
    assert AppConfig.from_args(["--no-hub-catalogue", "--server-port", "9000"], environ=env).server_port == 9000
    # A typo in a switch is an error, not "off" (it used to read anything but "" and "0" as on).
    with pytest.raises(ConfigError, match="^CATALOGUE_NO_HUB must be a boolean .* but is 'maybe'$"):
        AppConfig.from_env({"CATALOGUE_NO_HUB": "maybe"})
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL must be one of DEBUG, INFO, .* but is 'loud'$"):
        AppConfig.from_env({"LOG_LEVEL": "loud"})


def test_a_bad_setting_stops_main_before_anything_loads(monkeypatch, capsys):
    monkeypatch.setenv("LORA_RAY_REPLICAS", "0")
    with pytest.raises(SystemExit) as exit_info:
        app.main([])
    assert exit_info.value.code == 2
    assert "error: `replicas` (LORA_RAY_REPLICAS, --replicas) must be at least 1 but is 0" in capsys.readouterr().err


@dataclass(frozen=True)
class _Info:
    is_demo: bool
    base_model_id: str = "stabilityai/stable-diffusion-xl-base-1.0"
    local_lora_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Engine:
    """What ``_build_catalogue`` reads of an engine (a pure unit: no pipeline is needed to decide this)."""

    info: _Info
    config: EngineConfig = EngineConfig()


def test_the_catalogue_lists_the_hub_unless_offline_or_pointless(monkeypatch):
    # The tests' Hub is the loopback one (HF_ENDPOINT), so a demo engine lists it.
    assert app._build_catalogue(_Engine(_Info(is_demo=True)), AppConfig()).hub is not None
    assert app._build_catalogue(_Engine(_Info(is_demo=True)), AppConfig(no_hub_catalogue=True)).hub is None
    # HF_HUB_OFFLINE as huggingface_hub parsed it.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert app._build_catalogue(_Engine(_Info(is_demo=False)), AppConfig()).hub is None
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    # The public Hub has no LoRAs for the demo model.
    monkeypatch.setattr(hub_constants, "ENDPOINT", "https://huggingface.co")
    assert app._build_catalogue(_Engine(_Info(is_demo=True)), AppConfig()).hub is None
    assert app._build_catalogue(_Engine(_Info(is_demo=False)), AppConfig()).hub is not None


def _first_party() -> set[str]:
    return {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}


def test_app_imports_only_names_the_packages_export():
    tree = ast.parse((REPO_ROOT / "app.py").read_text(encoding="utf-8"))
    first_party = _first_party()
    checked = set()
    for node in ast.walk(tree):  # nested imports (inside main()) included
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in first_party:
            assert node.level == 0, f"relative import in app.py: {ast.unparse(node)}"
            module = importlib.import_module(node.module)
            assert hasattr(module, "__path__"), f"{node.module} is a module, not a package: {ast.unparse(node)}"
            exported = getattr(module, "__all__", ())
            missing = [a.name for a in node.names if a.name not in exported]
            assert not missing, f"{node.module}.__all__ lacks {missing} ({ast.unparse(node)})"
            checked.add(node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in first_party:
                    assert hasattr(importlib.import_module(alias.name), "__path__"), ast.unparse(node)
                    checked.add(alias.name)
    assert {"catalogue", "lora_engine", "lora_engine.serving"} <= checked
