"""How the Ray Serve application is laid out: one deployment per base model, its replicas, devices and adapters.

What this is for: the scale-out knobs of ``python app.py --ray`` (``lora_engine.serving.cluster``), read once from
flags, ``LORA_RAY_*`` variables or a YAML file, checked, and passed around as frozen dataclasses, like
:class:`~lora_engine.config.EngineConfig` for one engine. Each deployment carries the ``EngineConfig`` its
replicas build their engine from.

What it is not for: Ray itself. This module imports no ray (app.py reads these flags whether or not ``--ray``
is given, and the single-process app must not need ray); ``serving.cluster`` turns them into Serve options.

A YAML file (``--ray-config``) lists the deployments; each entry takes :class:`DeploymentSpec` fields and any
``EngineConfig`` field, on top of the flags and environment::

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
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..config import EngineConfig
from ..errors import ConfigError

__all__ = ["ClusterConfig", "DeploymentSpec"]


@dataclass(frozen=True)
class DeploymentSpec:
    """One Ray Serve deployment: one base model, served by ``replicas`` replicas that each hold one ``Engine``.

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

    engine: EngineConfig = field(default_factory=EngineConfig)
    replicas: int = 1
    gpus_per_replica: float | None = None
    cpus_per_replica: float = 1.0
    adapters_per_replica: int = 8
    max_ongoing_requests: int = 8
    max_queued_requests: int | None = None
    name: str | None = None

    def __post_init__(self):
        for name in ("replicas", "adapters_per_replica", "max_ongoing_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 but is {getattr(self, name)!r}")
        for name in ("gpus_per_replica", "cpus_per_replica", "max_queued_requests"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 but is {value!r}")
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


#: Flags and the environment variables behind them: (flag, env, type, default, help).
_FLAGS = (
    ("--ray", "LORA_RAY", "flag", False, "serve from a Ray Serve application (pip install -r requirements-ray.txt)"),
    (
        "--ray-address",
        "LORA_RAY_ADDRESS",
        str,
        None,
        "the Ray cluster to join (as ray.init reads it, e.g. 'auto' or ray://host:10001); unset: RAY_ADDRESS, or "
        "start a local Ray",
    ),
    ("--ray-config", "LORA_RAY_CONFIG", str, None, "a YAML file listing deployments (one per base model)"),
    ("--replicas", "LORA_RAY_REPLICAS", int, 1, "replicas of the (first) deployment"),
    (
        "--gpus-per-replica",
        "LORA_RAY_GPUS_PER_REPLICA",
        "auto-float",
        None,
        "Ray num_gpus per replica; 'auto': 1 when the cluster has GPUs, else 0",
    ),
    ("--cpus-per-replica", "LORA_RAY_CPUS_PER_REPLICA", float, 1.0, "Ray num_cpus per replica (fractions share)"),
    (
        "--adapters-per-replica",
        "LORA_RAY_ADAPTERS_PER_REPLICA",
        int,
        8,
        "Serve's max_num_models_per_replica: adapters each replica holds",
    ),
    (
        "--max-ongoing-requests",
        "LORA_RAY_MAX_ONGOING_REQUESTS",
        int,
        8,
        "requests a replica takes at once (running + its engine queue)",
    ),
    (
        "--max-queued-requests",
        "LORA_RAY_MAX_QUEUED_REQUESTS",
        int,
        None,
        "requests waiting for a free replica; one more gets HTTP 503 (unset: --max-queue)",
    ),
    ("--ray-retries", "LORA_RAY_RETRIES", int, 2, "retries on another replica when a request's replica dies"),
    ("--ray-num-cpus", "LORA_RAY_NUM_CPUS", float, None, "CPUs a local Ray may use (unset: all)"),
)


@dataclass(frozen=True)
class ClusterConfig:
    """The Ray Serve application: its deployments and how to reach Ray. Build with ``from_args``.

    Args:
        deployments (`tuple[DeploymentSpec, ...]`): one per base model; the first also serves requests without
            an adapter and names the base model whose LoRAs the UI's catalogue lists.
        address (`str`, *optional*): the Ray cluster to join; None: ``RAY_ADDRESS`` or a new local Ray.
        num_cpus (`float`, *optional*): CPUs a local Ray may use; None: all.
        retries (`int`): how many times a request whose replica died is sent to another replica.
        app_name (`str`): the Serve application's name.
        ship_code (`bool`, *optional*): upload ``lora_engine`` with the deployments (Ray ``py_modules``), for
            clusters whose nodes lack this checkout. None: when ``address`` is set.
        dashboard (`bool`, *optional*): start Ray's dashboard with a local Ray (off: a faster, lighter start on
            a laptop; a cluster started with ``ray start`` has its own). None: as Ray decides.
    """

    deployments: tuple[DeploymentSpec, ...] = (DeploymentSpec(),)
    address: str | None = None
    num_cpus: float | None = None
    retries: int = 2
    app_name: str = "lora"
    ship_code: bool | None = None
    dashboard: bool | None = False

    def __post_init__(self):
        if not self.deployments:
            raise ConfigError("a Ray Serve application needs at least one deployment")
        if self.retries < 0:
            raise ConfigError(f"LORA_RAY_RETRIES must be >= 0 but is {self.retries!r}")
        names = self.deployment_names()
        if len(set(names)) != len(names):
            raise ConfigError(f"deployment names must differ, but are {names}; set `name` in --ray-config")

    def deployment_names(self) -> list[str]:
        return [spec.deployment_name(i) for i, spec in enumerate(self.deployments)]

    @property
    def capacity(self) -> int:
        """Requests the whole application accepts at once (every deployment's ``capacity``)."""
        return sum(spec.capacity for spec in self.deployments)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the ``--ray`` flags, each documented with its environment variable and default."""
        group = parser.add_argument_group("Ray Serve scale-out (each flag overrides its environment variable)")
        for flag, env, kind, default, text in _FLAGS:
            help_text = f"[env: {env}] [default: {'auto' if kind == 'auto-float' else default!r}] {text}"
            if kind == "flag":
                group.add_argument(flag, action="store_true", default=None, help=help_text)
            else:
                group.add_argument(flag, default=None, type=_converter(flag, kind), help=help_text)

    @staticmethod
    def wanted(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> bool:
        """Whether ``--ray`` (or ``LORA_RAY``) asks for the Ray Serve application."""
        return bool(_values(args, os.environ if environ is None else environ)["ray"])

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, engine: EngineConfig, environ: Mapping[str, str] | None = None
    ) -> ClusterConfig:
        """The environment, then the flags (from ``add_arguments``), then ``--ray-config``'s file on top.

        Args:
            args (`argparse.Namespace`): parsed flags.
            engine (`EngineConfig`): the engine configuration every deployment starts from.
            environ (`Mapping[str, str]`, *optional*): defaults to ``os.environ``.

        Raises:
            ConfigError: a value does not parse, a key is unknown, or a rule is broken.
        """
        v = _values(args, os.environ if environ is None else environ)
        primary = DeploymentSpec(
            engine=engine,
            replicas=v["replicas"],
            gpus_per_replica=v["gpus_per_replica"],
            cpus_per_replica=v["cpus_per_replica"],
            adapters_per_replica=v["adapters_per_replica"],
            max_ongoing_requests=v["max_ongoing_requests"],
            max_queued_requests=v["max_queued_requests"],
        )
        top = {"address": v["ray_address"], "num_cpus": v["ray_num_cpus"], "retries": v["ray_retries"]}
        if v["ray_config"] is None:
            return cls(deployments=(primary,), **top)
        return cls.from_yaml(Path(v["ray_config"]), primary, **top)

    @classmethod
    def from_yaml(cls, path: Path, defaults: DeploymentSpec, **top) -> ClusterConfig:
        """Read a ``--ray-config`` file (see the module docstring); each deployment starts from ``defaults``."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"LORA_RAY_CONFIG {str(path)!r} could not be read: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"LORA_RAY_CONFIG {str(path)!r} must be a mapping with `deployments`")
        top_fields = {f.name for f in fields(cls)} - {"deployments"}
        unknown = sorted(set(data) - top_fields - {"deployments"})
        if unknown:
            raise ConfigError(f"unknown keys {unknown} in {str(path)!r}; known: {sorted(top_fields | {'deployments'})}")
        top = {**top, **{k: data[k] for k in top_fields if k in data}}
        entries = data.get("deployments") or [{}]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"`deployments` in {str(path)!r} must be a list of mappings")
        spec_fields = {f.name for f in fields(DeploymentSpec)} - {"engine"}
        engine_fields = {f.name for f in fields(EngineConfig)}
        specs = []
        for i, entry in enumerate(entries):
            unknown = sorted(set(entry) - spec_fields - engine_fields)
            if unknown:
                raise ConfigError(f"unknown keys {unknown} in deployment {i} of {str(path)!r}")
            engine_changes = {k: _engine_value(k, entry[k]) for k in entry if k in engine_fields}
            spec_changes = {k: entry[k] for k in entry if k in spec_fields}
            specs.append(replace(defaults, engine=defaults.engine.replace(**engine_changes), **spec_changes))
        return cls(deployments=tuple(specs), **top)


def _engine_value(name: str, value):
    # YAML gives lists where EngineConfig keeps tuples.
    return tuple(value) if isinstance(value, list) else value


def _converter(flag: str, kind):
    def convert(raw: str):
        return _parse(flag, kind, raw)

    return convert


def _parse(flag: str, kind, raw):
    if raw is None or isinstance(raw, (bool, int, float)) and not isinstance(raw, str):
        return raw
    env = next(e for f, e, *_ in _FLAGS if f == flag)
    text = str(raw).strip()
    try:
        if kind == "flag":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("", "0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "auto-float":
            return None if text.lower() == "auto" else float(text)
        return kind(text)
    except ValueError:
        name = kind if isinstance(kind, str) else kind.__name__
        raise ConfigError(f"{env} must be a {name} but is {raw!r}") from None


def _values(args: argparse.Namespace, environ: Mapping[str, str]) -> dict:
    out = {}
    for flag, env, kind, default, _ in _FLAGS:
        key = flag.removeprefix("--").replace("-", "_")
        value = getattr(args, key, None)
        if value is None and environ.get(env, "") != "":
            value = _parse(flag, kind, environ[env])
        out[key] = default if value is None else value
    return out
