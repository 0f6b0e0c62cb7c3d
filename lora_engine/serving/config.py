"""How the Ray Serve application is laid out: one deployment per base model, its replicas, devices and adapters.

What this is for: the scale-out knobs of ``python app.py --ray`` (``lora_engine.serving.cluster``), declared as
settings (``LORA_RAY_*`` variables and their flags, read by :mod:`lora_engine.settings` like every other) or read
from a YAML file, checked, and passed around as frozen dataclasses, like :class:`~lora_engine.config.EngineConfig`
for one engine. Each deployment carries the ``EngineConfig`` its replicas build their engine from.

What it is not for: Ray itself. This module imports no ray (app.py reads these settings whether or not ``--ray``
is given, and the single-process app must not need ray); ``serving.cluster`` turns them into Serve options.

A YAML file (``--ray-config``) lists the deployments; each entry takes :class:`DeploymentSpec` fields and any
``EngineConfig`` field, on top of the flags and environment (text values are read as the variables are:
``ram_cache_bytes: 8GiB``, ``gpus_per_replica: auto``)::

    retries: 2
    deployments:
      - replicas: 2                     # the first deployment also serves base-model requests and the UI catalogue
        gpus_per_replica: 1
        adapters_per_replica: 8
      - model_id: /models/my-sdxl-finetune
        base_model_id: me/my-sdxl-finetune
        replicas: 1
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ..config import EngineConfig
from ..errors import ConfigError
from ..settings import Kind, Settings, setting

__all__ = ["ClusterConfig", "DeploymentSpec"]


@dataclass(frozen=True)
class DeploymentSpec(Settings):
    """One Ray Serve deployment: one base model, served by ``replicas`` replicas that each hold one ``Engine``.

    The settings (``LORA_RAY_REPLICAS`` ...) set the first deployment, and every deployment of a ``--ray-config``
    file that does not set its own.

    Args:
        engine (`EngineConfig`): what each replica's engine loads and how (``model_id``, ``base_model_id``, ...).
        replicas (`int`): replicas of this deployment.
        gpus_per_replica (`float | None`): Ray ``num_gpus`` per replica (0.5: two replicas share a GPU); the
            engine's ``device="auto"`` then finds the GPU Ray assigned. None: 1 if the cluster has GPUs, else 0.
        cpus_per_replica (`float`): Ray ``num_cpus`` per replica; torch in the replica uses ``max(1, floor)`` of
            it as threads (Ray sets ``OMP_NUM_THREADS``), so fractions let several replicas share a laptop's CPUs.
        adapters_per_replica (`int`): Serve's ``max_num_models_per_replica``: adapters a replica holds in its RAM
            tier, least recently used unloaded first. ``engine.ram_cache_bytes`` should hold this many adapters.
        max_ongoing_requests (`int`): requests a replica takes at once (the one running plus its engine's queue,
            where they are grouped by adapter); the engine's ``max_queue`` is raised to at least this.
        max_queued_requests (`int`): requests waiting for a free replica, at each caller; one more is refused
            at once (``QueueFull``, HTTP 503). None: ``engine.max_queue``.
        name (`str`, *optional*): the deployment's name; None: from the base model id (or ``engine-<i>``).
    """

    settings_title: ClassVar[str] = "Ray Serve deployment"

    engine: EngineConfig = field(default_factory=EngineConfig)
    # One replica is one process with one pipeline; more replicas serve more requests at once.
    replicas: int = setting(
        1, env="LORA_RAY_REPLICAS", kind=Kind.INT, at_least=1, help="replicas of the (first) deployment"
    )
    # None ("auto") asks Ray whether the cluster has GPUs, so the same command runs on a laptop and a GPU node.
    gpus_per_replica: float | None = setting(
        None,
        env="LORA_RAY_GPUS_PER_REPLICA",
        kind=Kind.FLOAT,
        none_word="auto",
        shown_default="auto",
        at_least=0,
        help="Ray num_gpus per replica; 'auto': 1 when the cluster has GPUs, else 0",
    )
    # Fractions let several CPU replicas share a laptop's cores.
    cpus_per_replica: float = setting(
        1.0,
        env="LORA_RAY_CPUS_PER_REPLICA",
        kind=Kind.FLOAT,
        at_least=0,
        help="Ray num_cpus per replica (fractions share cores)",
    )
    # Serve routes a request to a replica holding its adapter; this is how many each replica holds.
    adapters_per_replica: int = setting(
        8,
        env="LORA_RAY_ADAPTERS_PER_REPLICA",
        kind=Kind.INT,
        at_least=1,
        help="Serve's max_num_models_per_replica: adapters each replica holds",
    )
    # Requests handed to a replica go into its engine's queue, where they are grouped by adapter.
    max_ongoing_requests: int = setting(
        8,
        env="LORA_RAY_MAX_ONGOING_REQUESTS",
        kind=Kind.INT,
        at_least=1,
        help="requests a replica takes at once (running + its engine queue)",
    )
    # A bounded wait in front of the replicas answers "busy" at once rather than letting waits grow.
    max_queued_requests: int | None = setting(
        None,
        env="LORA_RAY_MAX_QUEUED_REQUESTS",
        kind=Kind.INT,
        at_least=0,
        shown_default="--max-queue",
        help="requests waiting for a free replica; one more gets HTTP 503",
    )
    name: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", self.name):
            raise ConfigError(f"a deployment name must be letters, digits, '_', '.', '-' but is {self.name!r}")

    @property
    def queue_limit(self) -> int:
        """``max_queued_requests``, with its default filled in."""
        return self.engine.max_queue if self.max_queued_requests is None else self.max_queued_requests

    @property
    def capacity(self) -> int:
        """Requests this deployment accepts at once: in its replicas, plus waiting for one."""
        return self.replicas * self.max_ongoing_requests + self.queue_limit

    def deployment_name(self, index: int) -> str:
        if self.name is not None:
            return self.name
        base = self.engine.base_model_id or self.engine.model_id
        if base is None:
            return f"engine-{index}"
        return "engine-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-")[:90]


@dataclass(frozen=True)
class ClusterConfig(Settings):
    """The Ray Serve application: its deployments and how to reach Ray. Build with ``from_args``.

    Args:
        deployments (`tuple[DeploymentSpec, ...]`): one per base model; the first also serves requests without
            an adapter and names the base model whose LoRAs the UI's catalogue lists.
        enabled (`bool`): whether the app serves from this application (``--ray``) rather than in-process.
        address (`str`, *optional*): the Ray cluster to join; None: ``RAY_ADDRESS`` or a new local Ray.
        config_file (`str`, *optional*): the YAML file the deployments were read from (``from_args`` reads it).
        retries (`int`): how many times a request whose replica died is sent to another replica.
        num_cpus (`float`, *optional*): CPUs a local Ray may use; None: all.
        app_name (`str`): the Serve application's name.
        ship_code (`bool`, *optional*): upload ``lora_engine`` with the deployments (Ray ``py_modules``), for
            clusters whose nodes lack this checkout. None: when ``address`` is set.
        dashboard (`bool`, *optional*): start Ray's dashboard with a local Ray (off: a faster, lighter start on
            a laptop; a cluster started with ``ray start`` has its own). None: as Ray decides.
    """

    settings_title: ClassVar[str] = "Ray Serve scale-out"

    deployments: tuple[DeploymentSpec, ...] = (DeploymentSpec(),)
    # The single-process app is the default; Ray is an optional install.
    enabled: bool = setting(
        False,
        env="LORA_RAY",
        flag="--ray",
        kind=Kind.BOOL,
        help="serve from a Ray Serve application (pip install -r requirements-ray.txt)",
    )
    # Joining a running cluster needs its address; none starts a local Ray.
    address: str | None = setting(
        None,
        env="LORA_RAY_ADDRESS",
        flag="--ray-address",
        help="the Ray cluster to join (as ray.init reads it, e.g. 'auto' or ray://host:10001); unset: "
        "RAY_ADDRESS, or start a local Ray",
    )
    # Several base models, or per-deployment settings, do not fit in flags.
    config_file: str | None = setting(
        None,
        env="LORA_RAY_CONFIG",
        flag="--ray-config",
        help="a YAML file listing deployments (one per base model)",
    )
    # A replica may die mid-request; the request is sent again rather than failed.
    retries: int = setting(
        2,
        env="LORA_RAY_RETRIES",
        flag="--ray-retries",
        kind=Kind.INT,
        at_least=0,
        help="retries on another replica when a request's replica dies",
    )
    # A local Ray on a shared machine should not take every core.
    num_cpus: float | None = setting(
        None,
        env="LORA_RAY_NUM_CPUS",
        flag="--ray-num-cpus",
        kind=Kind.FLOAT,
        at_least=0,
        shown_default="all",
        help="CPUs a local Ray may use",
    )
    app_name: str = "lora"
    ship_code: bool | None = None
    dashboard: bool | None = False

    def __post_init__(self):
        super().__post_init__()
        if not self.deployments:
            raise ConfigError("a Ray Serve application needs at least one deployment")
        names = self.deployment_names()
        if len(set(names)) != len(names):
            raise ConfigError(f"deployment names must differ, but are {names}; set `name` in --ray-config")

    def deployment_names(self) -> list[str]:
        return [spec.deployment_name(i) for i, spec in enumerate(self.deployments)]

    @property
    def capacity(self) -> int:
        """Requests the whole application accepts at once (every deployment's ``capacity``)."""
        return sum(spec.capacity for spec in self.deployments)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the ``--ray`` flags and the deployments' (``DeploymentSpec``), each with its variable and default."""
        super().add_arguments(parser)
        DeploymentSpec.add_arguments(parser)

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace | Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        engine: EngineConfig | None = None,
        **overrides: Any,
    ) -> ClusterConfig:
        """The environment, then the flags (from ``add_arguments``), then ``--ray-config``'s file on top.

        Args:
            args (`argparse.Namespace` or `list[str]`, *optional*): parsed flags, or flags to parse.
            environ (`Mapping[str, str]`, *optional*): defaults to ``os.environ``.
            engine (`EngineConfig`, *optional*): the engine configuration every deployment starts from; None:
                read from the same ``args`` and ``environ``.
            overrides: ``ClusterConfig`` fields that win over both (``app_name=``, ...).

        Raises:
            ConfigError: a value does not parse, a key is unknown, or a rule is broken.
        """
        namespace = cls.parse_flags(args)
        if engine is None:
            engine = EngineConfig.from_args(namespace, environ)
        primary = DeploymentSpec.from_args(namespace, environ, engine=engine)
        cluster = super().from_args(namespace, environ, deployments=(primary,), **overrides)
        return cluster if cluster.config_file is None else cluster.with_file(Path(cluster.config_file))

    def with_file(self, path: Path) -> ClusterConfig:
        """This configuration with a ``--ray-config`` file's keys on top (see the module docstring): its
        deployments replace this one's, each starting from this configuration's first deployment.

        Raises:
            ConfigError: the file cannot be read, a key is unknown, or a value breaks a rule (naming where).
        """
        import yaml

        where = repr(str(path))
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"LORA_RAY_CONFIG {where} could not be read: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"LORA_RAY_CONFIG {where} must be a mapping with `deployments`")
        # Whether to use Ray, and which file to read, are decided before the file is read.
        top_fields = {f.name for f in fields(self)} - {"deployments", "enabled", "config_file"}
        unknown = sorted(set(data) - top_fields - {"deployments"})
        if unknown:
            raise ConfigError(f"unknown keys {unknown} in {where}; known: {sorted(top_fields | {'deployments'})}")
        entries = data.get("deployments") or [{}]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"`deployments` in {where} must be a list of mappings")
        spec_fields = {f.name for f in fields(DeploymentSpec)} - {"engine"}
        engine_fields = {f.name for f in fields(EngineConfig)}
        defaults = self.deployments[0]
        specs = []
        for i, entry in enumerate(entries):
            unknown = sorted(set(entry) - spec_fields - engine_fields)
            if unknown:
                raise ConfigError(f"unknown keys {unknown} in deployment {i} of {where}")
            try:
                engine = defaults.engine.replace(
                    **{k: EngineConfig.coerce(k, v, f"`{k}`") for k, v in entry.items() if k in engine_fields}
                )
                changes = {k: DeploymentSpec.coerce(k, v, f"`{k}`") for k, v in entry.items() if k in spec_fields}
                specs.append(defaults.replace(engine=engine, **changes))
            except ConfigError as e:
                raise ConfigError(f"deployment {i} of {where}: {e}") from None
        try:
            top = {k: type(self).coerce(k, v, f"`{k}`") for k, v in data.items() if k in top_fields}
            return replace(self, deployments=tuple(specs), **top)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
