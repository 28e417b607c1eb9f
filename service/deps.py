"""Per-app state and the FastAPI dependencies that hand it to the routes."""

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dynadapter.service.errors import not_ready, unauthorized
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.registry import ModelRegistry
from dynadapter.service.settings import Settings


@dataclass
class ServiceState:
    """What one app owns: its settings, its metrics registry and its model registry."""

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry
    ready: bool = False  # every model of the start loaded and warmed


# The dependencies are coroutines although nothing in them waits: FastAPI runs a plain `def` dependency on a
# worker thread (anyio's to_thread), a thread hop per dependency per request, which profiling found to be the
# costliest per-request work on the event loop (issue 32).


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_registry(state: StateDep) -> ModelRegistry:
    """The registry, once the models of the start are loaded and warm; 503 `not_ready` before."""
    if not state.ready:
        raise not_ready()
    return state.registry


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]

_bearer = HTTPBearer(auto_error=False, description="An API key, when the service is started with API keys.")


async def require_api_key(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """`Authorization: Bearer <key>` must carry one of the configured keys; no keys: open."""
    given = credentials.credentials if credentials is not None else ""
    if not key_accepted(state.settings.api_keys, given):
        raise unauthorized()


def key_accepted(keys: list[str], given: str) -> bool:
    """Whether `given` (a bearer token; "" when none came) is one of `keys`; no keys: every request is.
    The one rule of REST's `Authorization` header and gRPC's `authorization` metadata."""
    if not keys:
        return True
    # Compare with every key, in constant time, so timing tells nothing about which nearly matched.
    return any([secrets.compare_digest(given.encode(), key.encode()) for key in keys])
