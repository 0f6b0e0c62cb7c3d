"""The ``--ray`` configuration (flags, environment, YAML), and that nothing imports ray unless asked. No Ray runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from lora_engine import ConfigError, EngineConfig
from lora_engine.serving import ClusterConfig, DeploymentSpec


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    EngineConfig.add_arguments(parser)
    ClusterConfig.add_arguments(parser)
    args = parser.parse_args(argv)
    engine = EngineConfig.from_args(args, environ=environ or {})
    return args, ClusterConfig.from_args(args, environ or {}, engine=engine)


def test_the_app_and_the_engine_import_no_ray():
    code = "import sys, app, lora_engine, lora_engine.serving; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = "import sys, lora_engine.serving.cluster; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True False"


def test_flags_and_their_defaults():
    args, cluster = parse([])
    assert not cluster.enabled
    (spec,) = cluster.deployments
    assert (spec.replicas, spec.gpus_per_replica, spec.cpus_per_replica, spec.adapters_per_replica) == (1, None, 1.0, 8)
    assert spec.queue_limit == 64 and cluster.capacity == 8 + 64 and cluster.retries == 2

    args, cluster = parse(
        [
            "--ray",
            "--replicas",
            "2",
            "--adapters-per-replica",
            "4",
            "--gpus-per-replica",
            "0",
            "--max-queue",
            "10",
            "--model-id",
            "a/b",
        ]
    )
    assert cluster.enabled
    (spec,) = cluster.deployments
    assert (spec.replicas, spec.adapters_per_replica, spec.gpus_per_replica, spec.engine.model_id) == (2, 4, 0.0, "a/b")
    assert spec.queue_limit == 10 and cluster.deployment_names() == ["engine-a-b"]


def test_the_environment_counts_and_flags_win():
    env = {"LORA_RAY": "1", "LORA_RAY_REPLICAS": "3", "LORA_RAY_GPUS_PER_REPLICA": "0.5", "LORA_RAY_RETRIES": "0"}
    args, cluster = parse(["--replicas", "4"], env)
    assert cluster.enabled
    assert (cluster.deployments[0].replicas, cluster.deployments[0].gpus_per_replica, cluster.retries) == (4, 0.5, 0)
    _, cluster = parse(["--gpus-per-replica", "auto"], {"LORA_RAY_GPUS_PER_REPLICA": "1"})
    assert cluster.deployments[0].gpus_per_replica is None
    # The engine the deployments start from is read from the same flags when not given.
    cluster = ClusterConfig.from_args(["--ray", "off", "--replicas", "2"], {"LORA_ENGINE_MAX_QUEUE": "5"})
    assert not cluster.enabled and cluster.deployments[0].queue_limit == 5 and cluster.deployments[0].replicas == 2


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--replicas", "0"], {}, r"`replicas` \(LORA_RAY_REPLICAS, --replicas\) must be at least 1 but is 0"),
        ([], {"LORA_RAY_REPLICAS": "many"}, "LORA_RAY_REPLICAS must be an integer but is 'many'"),
        ([], {"LORA_RAY": "perhaps"}, "LORA_RAY must be a boolean .* but is 'perhaps'"),
        (["--gpus-per-replica", "-1"], {}, r"`gpus_per_replica` \(.*\) must be at least 0 but is -1.0"),
        ([], {"LORA_RAY_RETRIES": "-1"}, r"`retries` \(LORA_RAY_RETRIES, --ray-retries\) must be at least 0"),
    ],
)
def test_bad_values_fail_fast_naming_them(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv, env)


def test_a_yaml_file_lists_one_deployment_per_base_model(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "retries: 1\n"
        "deployments:\n"
        "  - {replicas: 2, gpus_per_replica: 1, adapters_per_replica: 16}\n"
        "  - {model_id: /models/b, base_model_id: me/sdxl-b, extra_base_models: [me/sdxl-b-v2], replicas: 1,\n"
        "     max_queue: 5, name: engine-b}\n"
    )
    _, cluster = parse(["--ray-config", str(path), "--adapters-per-replica", "3", "--dtype", "float16"])
    a, b = cluster.deployments
    assert (a.replicas, a.gpus_per_replica, a.adapters_per_replica, a.engine.dtype) == (2, 1, 16, "float16")
    assert (b.replicas, b.adapters_per_replica) == (1, 3)
    assert (b.engine.model_id, b.engine.base_model_id) == ("/models/b", "me/sdxl-b")
    assert b.engine.extra_base_models == ("me/sdxl-b-v2",) and b.engine.dtype == "float16" and b.queue_limit == 5
    assert cluster.retries == 1 and cluster.deployment_names() == ["engine-0", "engine-b"]
    assert cluster.capacity == (2 * 8 + 64) + (1 * 8 + 5)


def test_yaml_text_is_read_as_the_variables_are(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("deployments:\n  - {ram_cache_bytes: 8GiB, gpus_per_replica: auto, hub_timeout_s: 1m}\n")
    _, cluster = parse(["--ray-config", str(path), "--gpus-per-replica", "1"])
    (spec,) = cluster.deployments
    assert (spec.engine.ram_cache_bytes, spec.gpus_per_replica, spec.engine.hub_timeout_s) == (8 << 30, None, 60.0)
    assert cluster.config_file == str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deployments:\n  - {replicas: 1, gpu: 1}\n", r"unknown keys \['gpu'\] in deployment 0"),
        ("deployments:\n  - {}\n  - {replicas: 0}\n", r"^deployment 1 of '.*': `replicas` \(.*\) must be at least 1"),
        ("deployments:\n  - {ram_cache_bytes: lots}\n", r"^deployment 0 of '.*': `ram_cache_bytes` must be a size"),
        ("retries: -1\n", r"^'.*cluster.yaml': `retries` \(.*\) must be at least 0 but is -1$"),
        ("enabled: true\n", r"unknown keys \['enabled'\]"),
        ("replica: 2\n", r"unknown keys \['replica'\]"),
        ("deployments: [{name: x}, {name: x}]\n", "deployment names must differ"),
        ("deployments: 3\n", "must be a list of mappings"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_yaml_fails_fast(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse(["--ray-config", str(path)])


def test_the_app_documents_the_flags():
    out = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (
        "--ray ",
        "--replicas",
        "--gpus-per-replica",
        "--adapters-per-replica",
        "--ray-config",
        "[env: LORA_RAY_REPLICAS] [default: 1]",
    ):
        assert flag in out, flag


def test_replicas_get_the_hub_environment_and_this_checkout():
    import lora_engine
    from lora_engine.serving.cluster import job_runtime_env, runtime_env

    environ = {
        "HF_ENDPOINT": "http://127.0.0.1:1",
        "HF_TOKEN": "t",
        "XDG_CACHE_HOME": "/c",
        "HOME": "/root",
        "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S": "5",
    }
    env = runtime_env(environ)
    forwarded = ("HF_ENDPOINT", "HF_TOKEN", "XDG_CACHE_HOME", "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S")
    assert env == {"env_vars": {k: environ[k] for k in forwarded}}  # no HOME, no PYTHONPATH, no code
    # A local Ray with this checkout installed (requirements-dev: -e .): replicas import it, nothing is shipped.
    assert job_runtime_env(ClusterConfig()) == {}
    # A cluster, or a checkout that is not installed: Ray ships the package for the job.
    package = str(Path(lora_engine.__file__).resolve().parent)
    assert job_runtime_env(ClusterConfig(address="ray://head:10001")) == {"py_modules": [package]}
    assert job_runtime_env(ClusterConfig(), installed=False) == {"py_modules": [package]}
    assert job_runtime_env(ClusterConfig(ship_code=False), installed=False) == {}


def test_installed_is_asked_of_a_fresh_interpreter(monkeypatch):
    import sys

    from lora_engine.serving.cluster import _installed_here

    # The venv's editable install points at this checkout, as a local Ray replica's interpreter would see it.
    assert _installed_here()
    # The interpreter the venv was made from has no such install: the checkout is then shipped.
    monkeypatch.setattr(sys, "executable", sys._base_executable)
    assert not _installed_here()


def test_deployment_spec_rules():
    with pytest.raises(ConfigError, match="name"):
        DeploymentSpec(name="bad name!")
    assert DeploymentSpec(engine=EngineConfig(base_model_id="stabilityai/sdxl base")).deployment_name(3) == (
        "engine-stabilityai-sdxl-base"
    )


def test_deployment_options_follow_the_spec_and_hide_gpus_from_cpu_replicas():
    from lora_engine.serving.cluster import _engine_deployment

    cpu = _engine_deployment(
        "x",
        DeploymentSpec(
            gpus_per_replica=0, replicas=3, cpus_per_replica=0.5, max_ongoing_requests=5, max_queued_requests=7
        ),
        {"env_vars": {}},
    )
    assert (cpu.num_replicas, cpu.max_ongoing_requests, cpu.max_queued_requests) == (3, 5, 7)
    assert cpu.ray_actor_options["num_cpus"] == 0.5 and cpu.ray_actor_options["num_gpus"] == 0
    assert cpu.ray_actor_options["runtime_env"]["env_vars"] == {"CUDA_VISIBLE_DEVICES": ""}
    gpu = _engine_deployment("y", DeploymentSpec(gpus_per_replica=0.5), {"env_vars": {"HF_HOME": "/h"}})
    assert gpu.ray_actor_options["num_gpus"] == 0.5
    assert gpu.ray_actor_options["runtime_env"]["env_vars"] == {"HF_HOME": "/h"}
