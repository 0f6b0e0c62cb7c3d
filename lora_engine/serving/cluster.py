"""Scale-out on Ray Serve: one deployment per base model, adapter-aware routing by Serve's model multiplexing.

What this is for: serving past one process and one GPU. ``python app.py --ray`` (see ``serving.config`` for
the flags) starts or joins Ray, deploys the application below, and serves the same Gradio UI and ``POST /``
from a :class:`ClusterClient`, an engine-like object that forwards to it::

    app.py (UI, POST /, /metrics)  --ClusterClient-->  LoraIngress  --handle.options(multiplexed_model_id=adapter)-->
        LoraEngineDeployment "engine-<base A>"  (replicas x one Engine each)
        LoraEngineDeployment "engine-<base B>"  ...

Decisions, and why:

- **One Engine per replica; the multiplexed model id is the adapter id.** A replica's "loaded models" are the
  adapters parsed in its engine's RAM tier: Serve's ``@serve.multiplexed`` loader calls ``Engine.preload``,
  and when Serve unloads an adapter (its LRU, ``adapters_per_replica`` long) it calls the returned object's
  ``__del__``, which calls ``Engine.evict``. Serve's router then sends a request to a replica that already
  holds its adapter (after ``RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S``, 1 s, with none free: to
  the replica holding the fewest), so a hot adapter is swapped on one replica, not on all. We do not write
  our own router.
- **Eviction stays consistent both ways.** Serve's side: see above. The engine's side: its RAM tier is bounded
  by bytes (``ram_cache_bytes``), so it could drop an adapter Serve still counts as loaded if
  ``adapters_per_replica`` adapters do not fit; the replica then notices on the next request for it, parses
  it again from the disk tier and counts a ``resync`` (``stats()``). Size ``ram_cache_bytes`` to at least
  ``adapters_per_replica`` times the largest adapter (SDXL rank-32 LoRAs: about 200 MB; the default 4 GiB
  holds 8 of those), and no resync happens. Adapters the engine prefetches for its queue were all loaded
  through the multiplexer first (each request is), so Serve knows them.
- **One deployment per base model; the ingress routes by the adapter's card.** ``LoraIngress`` reads the
  adapter's ``base_model`` (local folder or the Hub's ``model_info``, cached, nothing downloaded:
  ``AdapterFetcher.card_base_models``) and calls the deployment serving it; none does:
  :class:`~lora_engine.errors.BaseModelNotDeployed` (HTTP 400, naming the base and the deployed ones).
  Requests without an adapter go to the first deployment.
- **Requests are checked and their seed drawn once, in the ingress**, with the target deployment's limits;
  so a retry draws the same image.
- **A replica that dies mid-request is retried on another** (``retries``, default 2; Ray's ``ActorDiedError``
  and ``ActorUnavailableError`` only, never a typed refusal), then fails clearly
  (:class:`~lora_engine.errors.ReplicaUnavailable`, HTTP 502). Serve restarts the replica meanwhile. A
  request accepted once is never refused for a full queue on its retry: it waits for room (up to 60 s).
- **The bounded queue:** a replica takes ``max_ongoing_requests`` at once, all of them into its engine's
  queue (``max_queue`` raised to at least that), where they are grouped by adapter; at most
  ``max_queued_requests`` more wait in the ingress for a free replica; one more is refused at once: Serve's
  ``BackPressureError`` becomes :class:`~lora_engine.errors.QueueFull` (HTTP 503).
- **Devices:** ``num_gpus`` per replica goes to Ray, which sets ``CUDA_VISIBLE_DEVICES`` for the replica; the
  engine's own ``device="auto"`` then picks that GPU, or the CPU with none. No device strings here; the same
  code runs on a laptop (fractional CPUs, the demo model) and on a GPU cluster.
- **Errors cross processes typed**: every ``EngineError`` pickles as itself; Ray wraps it in a
  ``RayTaskError``, which the ingress and the client unwrap.

What it is not for: the HTTP surface or the UI (``app.py``), nor running without Ray: this module imports ray
at import time, so nothing imports it unless asked (``app.py`` only under ``--ray``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, fields, replace
from pathlib import Path

import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from ..adapter_cache import AdapterKey
from ..backend_info import BackendInfo
from ..config import EngineConfig
from ..errors import BaseModelNotDeployed, EngineError, QueueFull, ReplicaUnavailable
from ..request import (
    BASE_ADAPTER,
    GenerationRequest,
    GenerationResult,
    RequestLimits,
    check_adapter_id,
    validate_request,
)
from ..service import ProgressCallback
from .config import ClusterConfig, DeploymentSpec

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterClient",
    "ClusterDescription",
    "ClusterMetrics",
    "DeploymentInfo",
    "LoraEngineDeployment",
    "LoraIngress",
    "build_application",
    "start",
]

#: The environment a replica needs from the driver's: huggingface_hub's own variables (the Hub, its cache, the
#: token), where the demo model is laid out, and how long Serve's router in the ingress waits for a replica holding
#: a request's adapter before sending it to any (affinity against balance; Serve's default is 1 s). Passed with
#: each deployment's runtime_env, since on a cluster the replicas' processes do not inherit the driver's environment.
FORWARDED_ENV = (
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "XDG_CACHE_HOME",
    "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S",
)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Seconds between retries of a request whose replica died, times the attempt number.
_RETRY_BACKOFF_S = 0.5
# How long such a request waits for room on another replica (it is never refused with QueueFull).
_RETRY_WAIT_S = 60.0


@dataclass(frozen=True)
class DeploymentInfo(BackendInfo):
    """What the ingress and the app know about one deployment: its engine's ``BackendInfo``, and more.

    Args:
        deployment (`str`): the Serve deployment's name.
        config (`EngineConfig`): its replicas' engine configuration.
        (the other fields): as ``BackendInfo`` (``limits``: what requests to it must satisfy).
    """

    deployment: str
    config: EngineConfig


@dataclass(frozen=True)
class ClusterDescription:
    """The application as the ingress sees it.

    Args:
        primary (`str`): the deployment serving requests without an adapter.
        deployments (`dict[str, DeploymentInfo]`): by deployment name.
        capacity (`int`): requests the application accepts at once (every deployment's replicas and queue).
    """

    primary: str
    deployments: dict[str, DeploymentInfo]
    capacity: int


class _ResidentAdapter:
    """What Serve's multiplexer holds for one adapter. Serve calls ``__del__`` when it unloads the adapter (and
    Python may call it again at collection): the first call releases it from the engine, later ones do nothing."""

    def __init__(self, adapter_id: str, release: Callable[[str], None]):
        self.adapter_id = adapter_id
        self._release: Callable[[str], None] | None = release

    def __del__(self):
        release, self._release = self._release, None
        if release is not None:
            release(self.adapter_id)


class LoraEngineDeployment:
    """A Serve deployment's replica: one ``Engine``, adapters multiplexed by id. See the module docstring.

    Args:
        config (`EngineConfig`): the engine's configuration.
        adapters_per_replica (`int`): Serve's ``max_num_models_per_replica``.
    """

    def __init__(self, config: EngineConfig, adapters_per_replica: int):
        from ..engine import Engine

        self.engine = Engine.from_config(config)
        self.replica = ray.get_runtime_context().get_actor_name() or f"pid-{os.getpid()}"
        self.deployment = serve.get_replica_context().deployment
        self._held: set[str] = set()  # what Serve's multiplexer holds now
        self._held_lock = threading.Lock()  # Serve unloads on an executor thread
        self._resyncs = 0
        self._loads = 0

        async def load_adapter(adapter_id: str) -> _ResidentAdapter:
            await asyncio.to_thread(self.engine.preload, adapter_id)
            self._loads += 1
            with self._held_lock:
                self._held.add(adapter_id)
            return _ResidentAdapter(adapter_id, self._release)

        # Wired here rather than with a decorator on a method so that the cap comes from the configuration.
        self._load_adapter = serve.multiplexed(max_num_models_per_replica=adapters_per_replica)(load_adapter)
        logger.info("replica %s of %s ready: %s", self.replica, self.deployment, self.engine.info)

    def _release(self, adapter_id: str) -> None:
        # Serve unloaded the adapter: the engine drops it too (its RAM and device tiers).
        with self._held_lock:
            self._held.discard(adapter_id)
        self.engine.evict(adapter_id)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one validated request; its adapter comes through the multiplexer when it is the model id."""
        adapter_id = serve.get_multiplexed_model_id()
        if adapter_id and adapter_id == request.lora:
            await self._load_adapter(adapter_id)
            if adapter_id not in self.engine.resident_adapters():
                # The engine's byte budget dropped what Serve counts as loaded: hold it again (module docstring).
                self._resyncs += 1
                await asyncio.to_thread(self.engine.preload, adapter_id)
        # Cancelling this coroutine (the caller left) cancels the wrapped future: the engine drops the request
        # if it has not started.
        result = await asyncio.wrap_future(self.engine.submit(request))
        where = {"deployment": self.deployment, "replica": self.replica, "replica_swaps": self._swaps()}
        return replace(result, details={**result.details, **where})

    def describe(self) -> DeploymentInfo:
        # Field by field, not asdict(): that would turn the nested RequestLimits into a dict.
        info = {f.name: getattr(self.engine.info, f.name) for f in fields(BackendInfo)}
        return DeploymentInfo(deployment=self.deployment, **info, config=self.engine.config)

    async def check_adapter(self, adapter_id: str):
        return await asyncio.to_thread(self.engine.check_adapter, adapter_id)

    def stats(self) -> dict:
        """This replica: swaps, requests, what Serve holds and what the engine holds (equal unless resyncs)."""
        status = self.engine.status()
        return {
            "deployment": self.deployment,
            "replica": self.replica,
            "swaps": self._swaps(),
            "requests_ok": self.engine.metrics.registry.get_sample_value(
                "lora_engine_requests_total", {"outcome": "ok"}
            )
            or 0.0,
            "multiplexed_adapters": self._held_now(),
            "resident_adapters": sorted(self.engine.resident_adapters()),
            "adapter_loads": self._loads,
            "resyncs": self._resyncs,
            "queue_depth": status.queue_depth,
            "active_adapter": status.active_adapter,
            "digest_ok": status.digest_ok,
        }

    def _held_now(self) -> list[str]:
        with self._held_lock:
            return sorted(self._held)

    def check_health(self) -> None:
        # Serve replaces a replica whose health check fails: one whose base weights no longer match their
        # digest must not serve another image.
        if not self.engine.status().digest_ok:
            raise RuntimeError("the base weights no longer match their startup digest")

    def _swaps(self) -> int:
        return int(self.engine.metrics.registry.get_sample_value("lora_engine_swaps_total") or 0)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close(timeout=5)


class LoraIngress:
    """Routes each request to the deployment serving its adapter's base model. See the module docstring.

    Args:
        engines (`dict[str, DeploymentHandle]`): the engine deployments by name (Serve passes handles).
        primary (`str`): the deployment for requests without an adapter.
        capacity (`int`): requests the application accepts at once (reported to the app).
        queue_limits (`dict[str, int]`): each deployment's ``max_queued_requests`` (for ``QueueFull``).
        retries (`int`): how many times a request whose replica died is sent again.
        hub_timeout_s (`float`): seconds for a Hub call reading a card.
    """

    def __init__(
        self,
        engines: dict,
        primary: str,
        capacity: int,
        queue_limits: dict[str, int],
        retries: int,
        hub_timeout_s: float,
    ):
        self._engines = engines
        self._primary = primary
        self._capacity = capacity
        self._queue_limits = queue_limits
        self._retries = retries
        self._hub_timeout_s = hub_timeout_s
        self._rng = random.SystemRandom()
        self._infos: dict[str, DeploymentInfo] | None = None
        self._by_base: dict[str, str] = {}
        self._fetcher = None
        self._describing: asyncio.Lock | None = None

    async def _ensure_described(self) -> dict[str, DeploymentInfo]:
        # Asked of the deployments on first use, not in __init__: Serve starts the ingress and the engines
        # together, and an engine's replicas take a while to load their model.
        if self._infos is not None:
            return self._infos
        if self._describing is None:
            self._describing = asyncio.Lock()
        async with self._describing:
            if self._infos is None:
                from ..adapters.fetch import AdapterFetcher

                infos = {name: await handle.describe.remote() for name, handle in self._engines.items()}
                by_base: dict[str, str] = {}
                for name, info in infos.items():
                    for base in info.accepted_base_models:
                        by_base.setdefault(base, name)
                local = dict.fromkeys(d for info in infos.values() for d in info.local_lora_dirs)
                self._fetcher = AdapterFetcher(
                    accepted_base_models=tuple(by_base),
                    local_dirs=tuple(Path(d) for d in local),
                    timeout_s=self._hub_timeout_s,
                )
                self._by_base = by_base
                self._infos = infos
        return self._infos

    async def describe(self) -> ClusterDescription:
        return ClusterDescription(self._primary, dict(await self._ensure_described()), self._capacity)

    async def route(self, adapter_id: str) -> str:
        """The deployment for ``adapter_id``: the one serving the first base model its card names.

        Raises:
            InvalidAdapterId, BaseModelNotDeployed, IncompatibleAdapter, AdapterNotFound, AdapterGated,
            AdapterFetchError
        """
        await self._ensure_described()
        if check_adapter_id(adapter_id) == BASE_ADAPTER:
            return self._primary
        bases = await asyncio.to_thread(self._fetcher.card_base_models, adapter_id)
        for base in bases:
            if base in self._by_base:
                return self._by_base[base]
        raise BaseModelNotDeployed(adapter_id, bases, sorted(self._by_base))

    async def generate(self, request: GenerationRequest, multiplexed: bool = True) -> GenerationResult:
        """Check the request, route it, run it; retried on another replica if its replica dies.

        Args:
            request (`GenerationRequest`): as the caller sent it.
            multiplexed (`bool`): route by adapter (Serve's multiplexing); False: to any replica (the benchmark's
                baseline).

        Raises:
            QueueFull, ReplicaUnavailable, BaseModelNotDeployed, and whatever the engine raises.
        """
        name = await self.route(request.lora)
        request = validate_request(request, self._infos[name].limits, self._rng)
        handle = self._engines[name]
        if multiplexed and request.lora != BASE_ADAPTER:
            handle = handle.options(multiplexed_model_id=request.lora)
        deaths = 0  # replicas that died running this request
        wait_until = 0.0
        while True:
            response = handle.generate.remote(request)
            try:
                result = await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError:
                if deaths == 0:
                    raise QueueFull(self._queue_limits[name]) from None
                # Accepted once already: it waits for room rather than being refused now.
                if time.monotonic() > wait_until:
                    raise ReplicaUnavailable(
                        f"the replica of {name} running this request died, and no other had room for it within "
                        f"{_RETRY_WAIT_S:.0f} s; try again in a moment"
                    ) from None
                await asyncio.sleep(_RETRY_BACKOFF_S)
                continue
            except RayTaskError as e:
                raise _typed(e) from None
            except RayActorError as e:
                deaths += 1
                if deaths > self._retries:
                    raise ReplicaUnavailable(
                        f"the replica of {name} running this request died, and so did {self._retries} retries "
                        f"({type(e).__name__}); try again in a moment"
                    ) from None
                logger.warning(
                    "a replica of %s died running a request (%s); retry %d of %d",
                    name,
                    type(e).__name__,
                    deaths,
                    self._retries,
                )
                wait_until = time.monotonic() + _RETRY_WAIT_S
                await asyncio.sleep(_RETRY_BACKOFF_S * deaths)
                continue
            return replace(result, details={**result.details, "attempts": deaths + 1})

    async def check_adapter(self, adapter_id: str):
        """The adapter's ``AdapterKey`` as the deployment for its base model resolves it (None for the base)."""
        name = await self.route(adapter_id)
        try:
            return await self._engines[name].check_adapter.remote(adapter_id)
        except RayTaskError as e:
            raise _typed(e) from None

    async def stats(self, deployment: str | None = None) -> dict:
        """One replica's ``stats()`` of ``deployment`` (the primary by default): whichever Serve picks."""
        return await self._engines[deployment or self._primary].stats.remote()


def _typed(error: RayTaskError) -> BaseException:
    """The engine's own error inside Ray's wrapper, or the wrapper itself for anything unexpected."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, EngineError) else error


def runtime_env(environ=None) -> dict:
    """The runtime_env of every deployment: the environment variables its replicas need from the driver's."""
    environ = os.environ if environ is None else environ
    return {"env_vars": {name: environ[name] for name in FORWARDED_ENV if environ.get(name)}}


def job_runtime_env(cluster: ClusterConfig, *, installed: bool | None = None) -> dict:
    """The runtime_env given to ``ray.init``: how every replica imports ``lora_engine``.

    Replicas import the package the way any Python program does: when it is installed in this interpreter's
    environment (``pip install -e .`` or a wheel) and Ray is local, the replicas' interpreter finds it there and
    nothing is shipped. Otherwise (a cluster, or a checkout run without installing) Ray uploads it for the job
    (``py_modules``, Ray's own way to ship code; Serve takes local directories only at the job level, not per
    deployment). No ``PYTHONPATH`` is edited.

    Args:
        cluster (`ClusterConfig`): ``address`` and ``ship_code`` decide.
        installed (`bool`, *optional*): whether this checkout is installed; None: ask a fresh interpreter.
    """
    ship = cluster.ship_code
    if ship is None:
        ship = cluster.address is not None or not (installed if installed is not None else _installed_here())
    return {"py_modules": [str(_PACKAGE_DIR)]} if ship else {}


def _installed_here() -> bool:
    """Whether a fresh interpreter of this environment, started outside the checkout, imports this very package.

    Asked of a subprocess (``-I``: no ``PYTHONPATH``, no current directory on the path) because that is what a local
    Ray replica is; this process's own ``sys.path`` may hold the checkout only because it was started from there.
    """
    import subprocess
    import sys

    probe = "import lora_engine, os; print(os.path.dirname(os.path.realpath(lora_engine.__file__)))"
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60, cwd=os.path.sep
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == os.path.realpath(_PACKAGE_DIR)


def build_application(cluster: ClusterConfig, *, environ=None):
    """The Serve application for ``cluster``: its engine deployments and the ingress, bound, not yet running.

    ``gpus_per_replica=None`` ("auto") needs Ray initialised, to ask whether the cluster has GPUs.
    """
    env = runtime_env(environ)
    names = cluster.deployment_names()
    engines, queue_limits = {}, {}
    for name, spec in zip(names, cluster.deployments):
        engines[name] = _engine_deployment(name, spec, env).bind(
            spec.engine.replace(max_queue=max(spec.engine.max_queue, spec.max_ongoing_requests)),
            spec.adapters_per_replica,
        )
        queue_limits[name] = spec.queue_limit
    # The ingress only awaits: it must never be what holds requests back (the engine deployments' queues are).
    ingress = serve.deployment(LoraIngress).options(
        name="ingress",
        num_replicas=1,
        max_ongoing_requests=2 * cluster.capacity + 16,
        ray_actor_options={"num_cpus": 0, "runtime_env": env},
    )
    return ingress.bind(
        engines,
        primary=names[0],
        capacity=cluster.capacity,
        queue_limits=queue_limits,
        retries=cluster.retries,
        hub_timeout_s=cluster.deployments[0].engine.hub_timeout_s,
    )


def _engine_deployment(name: str, spec: DeploymentSpec, env: dict):
    gpus = spec.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if not gpus:
        # Ray leaves CUDA_VISIBLE_DEVICES alone for actors without GPUs; hide them, so that the engine's
        # device="auto" does not take a GPU Ray did not give this replica.
        env = {**env, "env_vars": {**env["env_vars"], "CUDA_VISIBLE_DEVICES": ""}}
    return serve.deployment(LoraEngineDeployment).options(
        name=name,
        num_replicas=spec.replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        max_queued_requests=spec.queue_limit,
        ray_actor_options={"num_cpus": spec.cpus_per_replica, "num_gpus": gpus, "runtime_env": env},
        # Loading a model takes a while; a replica killed mid-run is replaced as soon as Serve sees it.
        graceful_shutdown_timeout_s=10,
    )


def start(cluster: ClusterConfig, *, environ=None) -> ClusterClient:
    """Start (or join) Ray, deploy the application, and return a client for it; blocks until it is ready.

    Joins ``cluster.address`` (or ``RAY_ADDRESS``) if set, else starts a local Ray, shipping ``lora_engine`` to it
    when its replicas could not import it otherwise (``job_runtime_env``); a caller that initialised Ray itself
    takes care of that. ``ClusterClient.close()`` deletes the application, and shuts down the Ray this call started.
    """
    started_ray = False
    if not ray.is_initialized():
        _init_ray(cluster)
        # ray.init() without an address starts a local Ray unless RAY_ADDRESS names one to join.
        started_ray = cluster.address is None and not (os.environ if environ is None else environ).get("RAY_ADDRESS")
    # No Serve HTTP proxy: app.py in front is the HTTP surface (and gets the same UI and POST / contract).
    serve.start(proxy_location="Disabled")
    t0 = time.monotonic()
    handle = serve.run(build_application(cluster, environ=environ), name=cluster.app_name, route_prefix=None)
    logger.info("Ray Serve application %r ready in %.1f s", cluster.app_name, time.monotonic() - t0)

    def shutdown() -> None:
        try:
            serve.delete(cluster.app_name)
        finally:
            if started_ray:
                serve.shutdown()
                ray.shutdown()

    return ClusterClient(handle, on_close=shutdown)


def _init_ray(cluster: ClusterConfig, attempts: int = 2) -> None:
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                address=cluster.address,
                num_cpus=cluster.num_cpus,
                include_dashboard=cluster.dashboard,
                log_to_driver=False,
                runtime_env=job_runtime_env(cluster),
            )
            return
        except Exception as e:  # Ray raises a bare Exception for this; anything else is re-raised below
            # A local Ray gives its raylet a fixed 30 s to register; a laptop busy with other work can miss it.
            if cluster.address is not None or "timed out during startup" not in str(e) or attempt == attempts:
                raise
            logger.warning("the local Ray did not start in time (%s); trying once more", e)
            ray.shutdown()


class ClusterClient:
    """What ``app.py`` serves from under ``--ray``: a :class:`~lora_engine.service.ImageService` forwarding to the
    ingress.

    ``submit`` returns a ``concurrent.futures.Future`` (cancelling it cancels the request); typed refusals come
    through it, ``QueueFull`` included (the app answers 503). There is no queue position or progress across
    processes: ``position``/``estimate_s`` return None ("not known") and ``on_progress`` is not called. Nor is there
    ``generate_inline`` (``service.InlineImageService``): that needs the pipeline in this process.

    Args:
        handle (`DeploymentHandle`): the ingress.
        on_close (`Callable`, *optional*): called by ``close()`` (``start`` passes the application's teardown).
        timeout_s (`float`): for the calls that block (``check_adapter``, ``describe``, ``stats``).
    """

    info: DeploymentInfo
    limits: RequestLimits
    config: EngineConfig

    def __init__(self, handle, *, on_close: Callable[[], None] | None = None, timeout_s: float = 120.0):
        self._handle = handle
        self._on_close = on_close
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-client", daemon=True)
        self._thread.start()
        self.description: ClusterDescription = self._blocking(self._call(handle.describe))
        primary = self.description.deployments[self.description.primary]
        #: The first deployment's: what the UI shows (defaults, limits, the catalogue's base model).
        self.info = primary
        self.limits = primary.limits
        # max_queue here is how many requests the UI hands over at once: the whole application's capacity.
        self.config = primary.config.replace(max_queue=self.description.capacity)
        #: Counters of this client (the replicas' own metrics stay in the replicas: ``stats()``).
        self.metrics = ClusterMetrics()
        self._closed = False

    # -- what app.py uses (service.ImageService) -------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, on_progress: ProgressCallback | None = None) -> Future:
        """Send a request to the application; a Future of its ``GenerationResult``.

        Args:
            request (`GenerationRequest`): checked in the ingress, against the limits of its deployment.
            on_progress: ignored (steps are not reported across processes).
        """
        return self.submit_routed(request, multiplexed=True)

    def check_adapter(self, adapter_id: str) -> AdapterKey | None:
        return self._blocking(self._call(self._handle.check_adapter, adapter_id))

    def position(self, future: Future) -> int | None:
        return None

    def estimate_s(self, future: Future) -> float | None:
        return None

    def metrics_text(self) -> bytes:
        """This client's counters in the Prometheus text format (the replicas' own stay in the replicas)."""
        return self.metrics.render()

    def close(self, timeout: float | None = 10.0) -> None:
        """Tear the application down (``on_close``) and stop this client's event loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._on_close is not None:
                self._on_close()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    # -- beyond app.py: benchmarks, tests, operators ---------------------------------------------------------

    def submit_routed(self, request: GenerationRequest, *, multiplexed: bool) -> Future:
        """``submit``, choosing the routing: ``multiplexed=False`` sends the request to any replica of its
        deployment, whichever adapters it holds (the benchmarks' baseline)."""
        if self._closed:
            from ..errors import EngineClosed

            raise EngineClosed("the Ray Serve client is closed")
        future = asyncio.run_coroutine_threadsafe(self._generate(request, multiplexed), self._loop)
        future.add_done_callback(self._count)
        return future

    def generate(
        self, request: GenerationRequest, timeout: float | None = None, *, multiplexed: bool = True
    ) -> GenerationResult:
        """``submit_routed(request, multiplexed=...).result(timeout)``: blocks until the image is ready."""
        return self.submit_routed(request, multiplexed=multiplexed).result(timeout)

    def stats(self, deployment: str | None = None) -> dict:
        """One replica's counters (swaps, requests, held adapters) of ``deployment``, the first by default."""
        return self._blocking(self._call(self._handle.stats, deployment))

    # -- plumbing -----------------------------------------------------------------------------------------------

    async def _generate(self, request: GenerationRequest, multiplexed: bool) -> GenerationResult:
        t0 = time.monotonic()
        result = await self._call(self._handle.generate, request, multiplexed)
        self.metrics.latency.observe(time.monotonic() - t0)
        if result.details.get("attempts", 1) > 1:
            self.metrics.retried.inc()
        return result

    async def _call(self, method, *args):
        response = method.remote(*args)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except RayTaskError as e:
            raise _typed(e) from None
        except BackPressureError:
            raise QueueFull(self.description.capacity) from None
        except RayActorError as e:
            raise ReplicaUnavailable(f"the Ray Serve ingress did not answer ({type(e).__name__})") from None

    def _blocking(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout_s)

    def _count(self, future: Future) -> None:
        if future.cancelled():
            outcome = "cancelled"
        elif future.exception() is None:
            outcome = "ok"
        else:
            error = future.exception()
            outcome = "refused" if isinstance(error, EngineError) else "error"
            if isinstance(error, EngineError):
                self.metrics.refusals.labels(error.kind).inc()
        self.metrics.requests.labels(outcome).inc()


class ClusterMetrics:
    """Counters of one :class:`ClusterClient`, in a registry of its own; ``render()`` gives Prometheus text."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "lora_cluster_requests", "Requests sent to the Ray Serve application, by outcome.", ["outcome"], registry=r
        )
        self.refusals = Counter("lora_cluster_refusals", "Typed refusals, by kind.", ["kind"], registry=r)
        self.retried = Counter(
            "lora_cluster_retried_requests", "Requests run again after their replica died.", registry=r
        )
        self.latency = Histogram(
            "lora_cluster_request_seconds",
            "From submit to result, for requests that succeeded.",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120),
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
