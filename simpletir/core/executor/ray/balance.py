"""Least-loaded choice among replicas, and turning a dead actor into :class:`ComponentLost`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from simpletir.core.errors import ComponentLost

T = TypeVar("T")


class LeastLoaded:
    """Picks the replica with the fewest calls in flight; ties go round-robin.

    Counting calls in flight (not calls sent) balances on what each replica still has to do:
    a replica stuck with long generations or slow snippets gets fewer new ones.
    """

    def __init__(self, replicas: int) -> None:
        self.in_flight = [0] * replicas
        self.calls = [0] * replicas
        self._turn = 0

    def pick(self, avoid: set[int] | frozenset[int] = frozenset()) -> int:
        """The least-loaded replica, not one in ``avoid`` (lost, restarting) while another is up."""
        n = len(self.in_flight)
        order = [(self._turn + i) % n for i in range(n)]
        order = [i for i in order if i not in avoid] or order
        best = min(order, key=lambda i: self.in_flight[i])
        self._turn = (best + 1) % n
        return best

    @contextlib.contextmanager
    def use(self, replica: int) -> Iterator[int]:
        self.in_flight[replica] += 1
        self.calls[replica] += 1
        try:
            yield replica
        finally:
            self.in_flight[replica] -= 1


def actor_errors() -> tuple[type[BaseException], ...]:
    """What Ray raises for a call whose actor died or is restarting."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return (RayActorError, ActorUnavailableError)


async def remote(what: str, call: Awaitable[T]) -> T:
    """Await an actor call; a dead (or restarting) actor becomes :class:`ComponentLost`."""
    try:
        return await call
    except actor_errors() as exc:
        raise ComponentLost(f"{what} was lost ({type(exc).__name__})") from exc


RESTART_WAIT_S = 600.0  # an engine replica reloads its model when restarted: minutes on a large one


async def wait_until_alive(actor: Any, what: str, timeout_s: float = RESTART_WAIT_S) -> None:
    """Return once a lost actor answers again (Ray is restarting it), so the work redone on it is
    not lost a second time to the restart itself; :class:`ComponentLost` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await actor.ping.remote()
            return
        except actor_errors() as exc:
            if loop.time() > deadline:
                raise ComponentLost(
                    f"{what} did not come back within {timeout_s:g} s ({type(exc).__name__})"
                ) from exc
            await asyncio.sleep(0.25)


def describe(exc: Any) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def stop_actors(actors: list[Any], *, timeout_s: float = 60.0) -> None:
    """Ask each actor to ``close()`` (frees its engine, pool or model in order), then kill it.

    A dead or wedged actor cannot close: killing it (no restart) is all that is left.
    """
    import ray

    refs = []
    for actor in actors:
        with contextlib.suppress(Exception):
            refs.append(actor.close.remote())
    with contextlib.suppress(Exception):
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
