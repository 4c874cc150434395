"""What trains the policy (``trainer.backend``): the :class:`TrainerBackend` seam and its builders."""

from simpletir.core.backend.base import (
    LossFn,
    TrainerBackend,
    build_backend,
    check_backend_available,
    check_backend_fits,
)

__all__ = ["LossFn", "TrainerBackend", "build_backend", "check_backend_available", "check_backend_fits"]
