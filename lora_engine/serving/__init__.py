"""Serving past one process: a Ray Serve application of engines, one deployment per base model.

What this is for: what a host (app.py) needs to serve from Ray: :class:`ClusterConfig` and
:class:`DeploymentSpec` (the ``--ray`` settings; pure) and :func:`start_cluster`, which deploys the application
and returns an engine-like client. Importing this package imports no ray: ``serving.cluster`` (which does) loads
only when :func:`start_cluster` runs, so the single-process app never needs ray installed.

What it is not for: the application's internals (``serving.cluster``: the deployments, the ingress, the client).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .config import ClusterConfig, DeploymentSpec

if TYPE_CHECKING:
    from .cluster import ClusterClient

__all__ = ["ClusterConfig", "DeploymentSpec", "start_cluster"]


def start_cluster(cluster: ClusterConfig, *, environ: Mapping[str, str] | None = None) -> ClusterClient:
    """Start (or join) Ray, deploy ``cluster``'s application, and return a client for it (``serving.cluster.start``).

    Args:
        cluster (`ClusterConfig`): the deployments and how to reach Ray.
        environ (`Mapping[str, str]`, *optional*): where the replicas' forwarded variables come from;
            defaults to ``os.environ``.

    Raises:
        ImportError: ray is not installed (``pip install -r requirements-ray.txt``).
    """
    from .cluster import start

    return start(cluster, environ=environ)
