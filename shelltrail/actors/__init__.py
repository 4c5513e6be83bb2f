"""Process actors: one pykka actor per run, and the façade the HTTP layer calls."""

from shelltrail.actors.process_actor import ProcessActor, RunnerConfig, RunSpec, Stop
from shelltrail.actors.supervisor import (
    ProcessSupervisor,
    QueueFull,
    ShuttingDown,
    SupervisorLimits,
)
from shelltrail.actors.tree import MARKER

__all__ = [
    "MARKER",
    "ProcessActor",
    "ProcessSupervisor",
    "QueueFull",
    "RunSpec",
    "RunnerConfig",
    "ShuttingDown",
    "Stop",
    "SupervisorLimits",
]
