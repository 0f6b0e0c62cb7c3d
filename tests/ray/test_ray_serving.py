"""The Ray Serve application on a local Ray: adapter-aware routing, two base models, the HTTP/UI contract in
front of it, the bounded queue, and a replica killed mid-run.

The tests share one application (``ray_cluster``) and run in this file's order: the routing test first, on
replicas that hold nothing yet; the replica kill last, since it replaces a replica.
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from lora_engine import GenerationRequest
from lora_engine.demo.model import DEMO_BASE_MODEL_ID, DEMO_LORAS
from lora_engine.errors import BaseModelNotDeployed, EngineError, InvalidRequest, QueueFull, ReplicaUnavailable
from tests.ray.conftest import BASE_B, HUB_LORAS_A, HUB_LORAS_B, NOT_DEPLOYED_BASE, NOT_DEPLOYED_LORA

pytestmark = pytest.mark.slow

# Serve's replicas push the adapters they hold every 0.1 s; the ingress's router hears of it a little later.
ROUTING_PROPAGATION_S = 2.0


def fast(lora: str = "", steps: int = 1, **kw) -> GenerationRequest:
    kw.setdefault("seed", 5)
    return GenerationRequest("a red circle", lora=lora, num_inference_steps=steps, width=64, height=64, **kw)


def swaps_by_replica(results, before: dict[str, int]) -> dict[str, int]:
    """Swaps each replica made during ``results``: its swap counter after its last request minus ``before``."""
    last: dict[str, int] = {}
    for r in results:
        last[r.details["replica"]] = max(last.get(r.details["replica"], 0), r.details["replica_swaps"])
    return {replica: n - before.get(replica, 0) for replica, n in last.items()}


def test_requests_for_the_same_adapter_go_to_the_replica_that_holds_it(ray_cluster):
    client = ray_cluster.client
    a = HUB_LORAS_A[0]
    # Warm-up: a is loaded on one replica; once the router knows, a new adapter goes to the replica holding fewer
    # adapters. (On a busy machine the router may hear late: then try the next adapter.)
    warm_a = client.generate(fast(a))
    for b in HUB_LORAS_A[1:5]:
        time.sleep(ROUTING_PROPAGATION_S)
        warm_b = client.generate(fast(b))
        if warm_b.details["replica"] != warm_a.details["replica"]:
            break
    time.sleep(ROUTING_PROPAGATION_S)
    assert warm_a.details["replica"] != warm_b.details["replica"]
    warm_a = client.generate(fast(a))  # a back in its replica's weights, should a tried adapter have gone there
    before = {r.details["replica"]: r.details["replica_swaps"] for r in (warm_a, warm_b)}

    routed = [client.generate(fast(lora)) for lora in [a, b] * 6]
    holder = {lora: {r.details["replica"] for r in routed if r.lora == lora} for lora in (a, b)}
    assert holder == {a: {warm_a.details["replica"]}, b: {warm_b.details["replica"]}}
    # Each replica kept its adapter in the weights: no swap at all, although the requests alternate a, b, a, ...
    assert swaps_by_replica(routed, before) == {warm_a.details["replica"]: 0, warm_b.details["replica"]: 0}
    assert all(r.details["attempts"] == 1 and r.cache_tier == "active" for r in routed)

    # The same requests without multiplexing (random routing) land on both replicas and swap there.
    before = {r.details["replica"]: r.details["replica_swaps"] for r in routed}
    spread = [client.generate(fast(lora), multiplexed=False) for lora in [a, b] * 6]
    assert {r.details["replica"] for r in spread} == set(before)
    assert sum(swaps_by_replica(spread, before).values()) > 0


def test_each_base_model_goes_to_its_own_deployment(ray_cluster):
    client = ray_cluster.client
    on_a = client.generate(fast(DEMO_LORAS[0].repo_id))
    on_b = client.generate(fast(HUB_LORAS_B[0]))
    base = client.generate(fast(""))
    assert on_a.details["deployment"] == base.details["deployment"] == ray_cluster.primary
    assert on_b.details["deployment"] == ray_cluster.secondary == "engine-b"
    # Downloaded from the Hub by the multiplexer's loader (Engine.preload), so the request finds it in RAM.
    assert on_b.cache_tier == "ram" and len(on_b.adapter_revision) == 40
    assert client.check_adapter(HUB_LORAS_B[0]).repo_id == HUB_LORAS_B[0]
    infos = client.description.deployments
    assert infos["engine-b"].base_model_id == BASE_B and infos[ray_cluster.primary].base_model_id == DEMO_BASE_MODEL_ID
    assert client.info.base_model_id == DEMO_BASE_MODEL_ID  # the UI's: the first deployment's


def test_a_base_model_without_a_deployment_gets_a_clear_error(ray_cluster):
    with pytest.raises(BaseModelNotDeployed) as caught:
        ray_cluster.client.generate(fast(NOT_DEPLOYED_LORA))
    error = caught.value
    assert error.adapter_id == NOT_DEPLOYED_LORA and error.base_models == (NOT_DEPLOYED_BASE,)
    assert set(error.deployed) == {DEMO_BASE_MODEL_ID, BASE_B}
    assert NOT_DEPLOYED_BASE in str(error) and BASE_B in str(error) and error.client_error


def test_serve_eviction_is_the_engine_eviction(ray_cluster):
    # engine-b: one replica holding at most 2 adapters (adapters_per_replica=2).
    client = ray_cluster.client
    for lora in HUB_LORAS_B:
        client.generate(fast(lora))
    stats = client.stats("engine-b")
    assert stats["multiplexed_adapters"] == stats["resident_adapters"] == sorted(HUB_LORAS_B[1:])
    assert stats["resyncs"] == 0
    # The evicted one is loaded again when asked for (from the disk tier), and the least recently used leaves.
    loads = stats["adapter_loads"]
    client.generate(fast(HUB_LORAS_B[0]))
    stats = client.stats("engine-b")
    assert stats["adapter_loads"] == loads + 1
    assert stats["multiplexed_adapters"] == stats["resident_adapters"] == sorted([HUB_LORAS_B[0], HUB_LORAS_B[2]])


def test_typed_refusals_come_back_typed(ray_cluster, fake_hub):
    client = ray_cluster.client
    with pytest.raises(InvalidRequest, match="seed"):
        client.generate(fast(seed=-5))
    with pytest.raises(InvalidRequest, match="num_inference_steps"):
        client.generate(fast(HUB_LORAS_B[0], steps=1000))  # checked against engine-b's limits
    with pytest.raises(EngineError, match="no such repo"):
        client.generate(fast("nobody/missing-lora"))


@pytest.fixture(scope="module")
def ray_app(ray_cluster, tmp_path_factory):
    """``python app.py --ray`` in-process: the app's UI and HTTP surface in front of the Ray application."""
    from catalogue import Catalogue, LocalSource
    from tests.support.serving import serve

    client = ray_cluster.client
    catalogue = Catalogue(
        base_model=client.info.base_model_id,
        local=[LocalSource(d) for d in client.info.local_lora_dirs],
        cache_dir=tmp_path_factory.mktemp("ray-catalogue"),
    )
    catalogue.start()
    served = serve(client, catalogue)
    yield served
    served.stop()  # closes the client too; ray_cluster's close() then does nothing


def post(url: str, lora: str = "", body: dict | None = None, timeout: float = 120):
    body = body if body is not None else {"inputs": "a red circle", "parameters": {"seed": 9, "num_inference_steps": 1}}
    return httpx.post(url + "/", json=body, headers={"lora": lora}, timeout=timeout)


def test_post_keeps_its_contract_in_front_of_ray(ray_app, fake_hub):
    ok = post(ray_app.url, HUB_LORAS_B[1])
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert ok.headers["x-lora"] == HUB_LORAS_B[1] and ok.headers["x-seed"] == "9"
    assert {"queue_s", "inference_s"} <= set(json.loads(ok.headers["x-timings"]))
    assert Image.open(io.BytesIO(ok.content)).size == (64, 64)

    bad = post(ray_app.url, body={"inputs": "x", "parameters": {"width": 100}})
    assert bad.status_code == 400 and bad.json()["error_type"] == "invalid_request" and "100" in bad.json()["error"]
    other = post(ray_app.url, NOT_DEPLOYED_LORA)
    assert other.status_code == 400 and other.json()["error_type"] == "base_model_not_deployed"
    assert NOT_DEPLOYED_BASE in other.json()["error"]
    assert post(ray_app.url, "../../etc/passwd").json()["error_type"] == "invalid_adapter_id"

    fake_hub.fail_status, fake_hub.fail_paths = 500, r"ray-a/lora-7"
    hub_down = post(ray_app.url, HUB_LORAS_A[7])
    assert hub_down.status_code == 502 and hub_down.json()["error_type"] == "adapter_fetch_error"
    fake_hub.reset()

    metrics = httpx.get(ray_app.url + "/metrics", timeout=30).text
    assert 'lora_cluster_requests_total{outcome="ok"}' in metrics and "lora_catalogue_entries" in metrics


def test_the_bounded_queue_refuses_at_once_and_loses_nothing(ray_app, ray_cluster):
    # engine-0 takes 2 requests per replica and queues 2 more: 6 at once. Twelve slow ones (seconds each) are sent
    # together (through the client: HTTP clients in this busy process would arrive spread out), then one by HTTP.
    client = ray_cluster.client
    slow = [client.submit(fast(steps=100, seed=i)) for i in range(12)]
    time.sleep(0.5)
    # Serve may refuse more than it must when requests arrive together (its count of queued requests is updated
    # as they are placed): HTTP requests follow one by one until the queue is seen full.
    quick = {"inputs": "a blue square", "parameters": {"seed": 1, "num_inference_steps": 1}}
    with ThreadPoolExecutor(6) as pool:
        pending = []
        for _ in range(6):
            pending.append(pool.submit(post, ray_app.url, "", quick))
            time.sleep(0.2)
        answers = [p.result() for p in pending]
    codes = {a.status_code for a in answers}
    assert 503 in codes and codes <= {200, 503}, [(a.status_code, a.text[:200]) for a in answers]
    for over in (a for a in answers if a.status_code == 503):
        assert over.json()["error_type"] == "queue_full" and "queue is full" in over.json()["error"]
        assert over.headers["retry-after"]

    outcomes = defaultdict(list)
    for i, f in enumerate(slow):
        try:
            outcomes["ok"].append(f.result(300).seed)
        except QueueFull:
            outcomes["queue_full"].append(i)
    assert set(outcomes) == {"ok", "queue_full"} and len(outcomes["ok"]) <= 6 + 1, dict(outcomes)
    assert sorted(outcomes["ok"] + outcomes["queue_full"]) == list(range(12))  # every one answered, once
    assert post(ray_app.url, "").status_code == 200  # and it serves again right after


def test_the_ui_works_in_front_of_ray(ray_app, ray_cluster):
    from gradio_client import Client

    client = Client(ray_app.url + "/", verbose=False)
    image, details = client.predict(
        prompt="a red circle", lora=DEMO_LORAS[1].repo_id, seed=4, num_inference_steps=1, api_name="/generate"
    )
    assert open(image, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert details["lora"] == DEMO_LORAS[1].repo_id and details["deployment"] == ray_cluster.primary
    entries = client.predict(query="", api_name="/catalogue")
    assert {e["repo_id"] for e in entries} >= {spec.repo_id for spec in DEMO_LORAS}


def test_a_killed_replica_is_restarted_and_no_accepted_request_is_lost(ray_cluster):
    import ray
    from ray import serve

    client = ray_cluster.client
    adapter = HUB_LORAS_A[5]
    victim = client.generate(fast(adapter)).details["replica"]
    time.sleep(ROUTING_PROPAGATION_S)
    # Slow requests for the victim's adapter, as many as the application takes at once: two run there, two wait
    # in the ingress for it (or spill to the other replica after a second). A little apart, since Serve counts a
    # request as queued until a replica has taken it.
    futures = []
    for i in range(4):
        futures.append(client.submit(fast(adapter, steps=100, seed=i)))
        time.sleep(0.25)
    time.sleep(0.5)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(180))
        except (QueueFull, ReplicaUnavailable) as e:
            # The clear errors the contract allows: refused at once, never accepted (the ingress never answers
            # QueueFull to a retry), or retries used up.
            outcomes.append(e)
    results = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(results) >= 2, outcomes
    assert {r.seed for r in results} == {i for i, o in enumerate(outcomes) if o in results}
    assert any(r.details["attempts"] > 1 for r in results), "no request was running on the killed replica"
    assert all(r.details["replica"] != victim for r in results if r.details["attempts"] > 1)

    # Serve replaces the replica: the deployment is back to two running replicas, one of them new.
    deadline = time.monotonic() + 150
    seen: set[str] = set()
    while time.monotonic() < deadline:
        state = serve.status().applications["lora"].deployments[ray_cluster.primary]
        if state.replica_states.get("RUNNING", 0) == ray_cluster.replicas:
            seen |= {client.generate(fast(), multiplexed=False).details["replica"] for _ in range(4)}
            if len(seen - {victim}) == ray_cluster.replicas:
                break
        time.sleep(1.0)
    assert victim not in seen and len(seen) == ray_cluster.replicas, (victim, seen)
