"""Per-app state and the FastAPI dependencies that hand it to the routes."""

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dynadapter.service.engine import Engine
from dynadapter.service.errors import not_ready, unauthorized
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.settings import Settings


@dataclass
class ServiceState:
    """What one app owns: its settings, its metrics registry and, once loaded, the engine."""

    settings: Settings
    metrics: ServiceMetrics
    engine: Engine | None = None
    ready: bool = False  # loaded and warmed

    def model_label(self) -> str:
        if self.engine is not None:
            return self.engine.name
        return self.settings.model_name or "unknown"


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_engine(state: StateDep) -> Engine:
    if state.engine is None or not state.ready:
        raise not_ready()
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]

_bearer = HTTPBearer(auto_error=False, description="An API key, when the service is started with API keys.")


def require_api_key(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """`Authorization: Bearer <key>` must carry one of the configured keys; no keys: open."""
    keys = state.settings.api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    # Compare with every key, in constant time, so timing tells nothing about which nearly matched.
    if not any([secrets.compare_digest(given, key.encode()) for key in keys]):
        raise unauthorized()
