"""Connecting to Ray: a private Ray for one run, or a running cluster (``ray.address``).

Before any actor is created the run checks that the cluster has the CPUs and GPUs its actors
reserve: an actor that cannot be placed would otherwise wait forever, silently.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simpletir.core.errors import ConfigError

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig

# Environment a worker on another node needs to behave like this process (offline hub, vLLM's CPU
# settings, the sandbox's and simpletir's own variables). A private Ray's workers inherit them anyway.
FORWARDED_ENV_PREFIXES = ("SIMPLETIR_", "HF_", "TRANSFORMERS_", "VLLM_", "WANDB_")


@dataclass(frozen=True)
class Reservation:
    """What one kind of actor reserves, times how many of them run."""

    what: str
    count: int
    cpus: float
    gpus: float


def reservations(config: ExperimentConfig, *, gpus_present: bool) -> list[Reservation]:
    """Every actor this run will create, with its resources (auto GPUs resolved)."""
    r = config.ray
    out = [
        Reservation(
            "rollout engine replica", r.engine_replicas, r.engine_cpus, engine_gpus(config, gpus_present)
        )
    ]
    if config.tool_use and config.tools:
        out.append(Reservation("sandbox pool", r.sandbox_pools * len(config.tools), r.sandbox_cpus, 0.0))
    out.append(Reservation("reward worker", r.reward_workers, r.reward_cpus, 0.0))
    if not config.val_only:
        out.append(Reservation("trainer backend", 1, r.trainer_cpus, trainer_gpus(config, gpus_present)))
    return out


def engine_gpus(config: ExperimentConfig, gpus_present: bool) -> float:
    if config.ray.engine_gpus >= 0:
        return float(config.ray.engine_gpus)
    return float(config.rollout.tensor_parallel_size) if gpus_present else 0.0


def trainer_gpus(config: ExperimentConfig, gpus_present: bool) -> float:
    if config.ray.trainer_gpus >= 0:
        return float(config.ray.trainer_gpus)
    return 1.0 if gpus_present else 0.0


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def connect(config: ExperimentConfig) -> bool:
    """Start or attach to Ray; True when this call started a private Ray (to shut down later).

    A Ray already initialised in this process (a notebook, a test) is used as it is.
    """
    import ray

    r = config.ray
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": forwarded_env()}
    if r.address is not None:
        try:
            check_reachable(r.address)
            ray.init(address=r.address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(
                f"ray.address={r.address!r}: cannot attach to a Ray cluster ({type(exc).__name__}: {exc}); "
                "start one with `ray start --head` or leave ray.address unset for a private Ray"
            ) from exc
        return False
    # A private Ray: logical CPUs enough for every actor (they are reservations, not cores: on one
    # machine the local executor oversubscribes the same way), at least the machine's cores.
    needed = sum(x.count * x.cpus for x in reservations(config, gpus_present=False))
    num_cpus = r.num_cpus or max(os.cpu_count() or 1, math.ceil(needed))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a cluster only we use
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=r.object_store_mb * 2**20,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise ConnectionError when a ``host:port`` head does not answer (Ray itself retries for minutes).

    ``auto`` is checked through ``$RAY_ADDRESS`` when set (else Ray looks for a head started on this
    node and fails at once when there is none); ``ray://`` client addresses are left to Ray.
    """
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"no Ray head answers at {address} ({exc})") from None


def gpus_present() -> bool:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) > 0


def check_resources(config: ExperimentConfig) -> None:
    """Fail in one line when the cluster cannot hold every actor at once."""
    import ray

    total = ray.cluster_resources()
    plan = reservations(config, gpus_present=gpus_present())
    for resource, key in (("CPU", "cpus"), ("GPU", "gpus")):
        needed = sum(x.count * getattr(x, key) for x in plan)
        have = float(total.get(resource, 0.0))
        if needed > have + 1e-9:
            parts = ", ".join(f"{x.count} {x.what} x {getattr(x, key):g}" for x in plan if getattr(x, key))
            raise ConfigError(
                f"executor=ray: the actors reserve {needed:g} {resource}s ({parts}) but the Ray cluster has "
                f"{have:g}; lower ray.*_{key} or the counts, or add nodes"
            )


def shutdown() -> None:
    import ray

    ray.shutdown()
