"""A local Ray Serve application for the Ray tests: two base models, the demo one on two replicas.

One application is started per module that asks for it (``ray_cluster``: about 30 s on two cores, most of
it three replicas importing torch and loading their model), and shut down after it. Ray runs with two CPUs;
replicas ask for half a CPU each, so three of them and the ingress fit, sharing the machine's cores as
they would on a laptop. The replicas reach the session's loopback Hub through the forwarded ``HF_*``
variables (``serving.cluster.FORWARDED_ENV``).

Adapters: the demo's own (local folders), ``ray-a/lora-<i>`` on the Hub for the demo base, and
``ray-b/lora-<i>`` for the second base, ``test/tiny-sdxl-b``: a copy of the demo pipeline saved to another
folder, served by its own deployment ``engine-b``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_B = "test/tiny-sdxl-b"
#: Adapters on the loopback Hub, per base: fresh ids, so each test starts from adapters no replica holds.
HUB_LORAS_A = [f"ray-a/lora-{i}" for i in range(8)]
HUB_LORAS_B = [f"ray-b/lora-{i}" for i in range(3)]
NOT_DEPLOYED_BASE = "test/base-nobody-serves"
NOT_DEPLOYED_LORA = "ray-c/lora-for-another-base"


@dataclass
class RayCluster:
    """The running application: the client app.py would use, and what the tests need to know about it."""

    client: object  # lora_engine.serving.cluster.ClusterClient
    primary: str
    secondary: str
    replicas: int
    primary_capacity: int  # requests the primary deployment takes at once (running, in engines, waiting)


def publish_loras(hub_root: Path, assets) -> None:
    from lora_engine.demo.model import DEMO_BASE_MODEL_ID, DEMO_LORAS
    from lora_engine.testing.lora_files import lora_card, publish

    def data(i: int) -> bytes:
        spec = DEMO_LORAS[i % len(DEMO_LORAS)]
        return (assets.lora_dir(spec.repo_id) / spec.weight_name).read_bytes()

    for i, repo in enumerate(HUB_LORAS_A):
        publish(hub_root, repo, {"lora.safetensors": data(i)}, card=lora_card(base_model=DEMO_BASE_MODEL_ID))
    for i, repo in enumerate(HUB_LORAS_B):
        publish(hub_root, repo, {"lora.safetensors": data(i)}, card=lora_card(base_model=BASE_B))
    publish(hub_root, NOT_DEPLOYED_LORA, {"lora.safetensors": data(0)}, card=lora_card(base_model=NOT_DEPLOYED_BASE))


def cluster_config(demo_root: Path, model_b: Path, cache: Path, **primary):
    from lora_engine import EngineConfig
    from lora_engine.serving.config import ClusterConfig, DeploymentSpec

    common = dict(hub_cache_dir=str(cache), hub_timeout_s=5.0, default_steps=2, default_side=64)
    spec_a = dict(
        replicas=2,
        cpus_per_replica=0.5,
        gpus_per_replica=0,
        adapters_per_replica=3,
        max_ongoing_requests=2,
        max_queued_requests=2,
    )
    spec_a.update(primary)
    return ClusterConfig(
        deployments=(
            DeploymentSpec(engine=EngineConfig(demo_dir=str(demo_root), **common), **spec_a),
            DeploymentSpec(
                engine=EngineConfig(model_id=str(model_b), base_model_id=BASE_B, **common),
                replicas=1,
                cpus_per_replica=0.5,
                gpus_per_replica=0,
                adapters_per_replica=2,
                max_ongoing_requests=2,
                max_queued_requests=2,
                name="engine-b",
            ),
        ),
        num_cpus=2,
        dashboard=False,
        retries=2,
    )


@pytest.fixture(scope="session")
def model_b(demo_assets, tmp_path_factory) -> Path:
    """The second base model: the demo pipeline saved to another folder (served under another base id)."""
    folder = tmp_path_factory.mktemp("base-b") / "tiny-sdxl-b"
    shutil.copytree(demo_assets.model_dir, folder)
    return folder


@pytest.fixture(scope="module")
def ray_cluster(demo_assets, hub_root, model_b, tmp_path_factory):
    from lora_engine.serving.cluster import start

    publish_loras(hub_root, demo_assets)
    config = cluster_config(demo_assets.root, model_b, tmp_path_factory.mktemp("ray-hf-cache"))
    client = start(config)
    names = config.deployment_names()
    try:
        primary = config.deployments[0]
        yield RayCluster(client, names[0], names[1], primary.replicas, primary.capacity)
    finally:
        client.close()
