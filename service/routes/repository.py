"""Triton's model repository extension: list the repository, load (or reload) and unload models, live.

Behind the API key when keys are set. A load opens and warms the versions the policy picks before they
take traffic, and reopens a served version whose files changed on disk; requests in flight finish on
the version they started on (dynadapter.service.registry). As in Triton's poll mode, explicit load
and unload are refused while the repository is polled (setting `repository_poll_s`): the folder is
then the one source of truth. Model names are confined to the repository (a name is one folder:
dynadapter.contract.model_repository.MODEL_NAME_RULE); errors never show the repository's path.
"""

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from dynadapter.contract.model_repository import InvalidModelName, ModelLoadError
from dynadapter.service.deps import ServiceState, StateDep, require_api_key
from dynadapter.service.errors import ApiError, bad_request
from dynadapter.service.registry import checked, invalid_name

router = APIRouter(tags=["oip"], dependencies=[Depends(require_api_key)])

#: Parameters of the unload body this service accepts, with the one value each may take: no model
#: depends on another here (no ensembles), so Triton's `unload_dependents` can only be false.
_UNLOAD_PARAMETERS: dict[str, object] = {"unload_dependents": False}


@router.post("/v2/repository/index")
async def index(state: StateDep) -> list[dict[str, str]]:
    """Every model of the repository (or of the `models` setting): each served version READY, else UNAVAILABLE."""
    return state.registry.index()


@router.post(
    "/v2/repository/models/{name}/load",
    responses={
        400: {
            "description": "Invalid model name, a parameter in the body (none is supported), model control "
            "off while the repository is polled, or a model that cannot be loaded (the message says why; "
            "what served before still does)"
        }
    },
)
async def load(name: str, request: Request, state: StateDep) -> JSONResponse:
    """Load `name`, or reload it in the versions the policy picks now (reopening versions whose files
    changed); answers once they are warm and serving. The body, if any, is `{}` or `{"parameters": {}}`:
    Triton's file and config overrides are refused, the repository folder is what loads."""
    checked(name)
    await load_model(state, name, await _parameters(request, "load"))
    return JSONResponse({})


async def load_model(state: ServiceState, name: str, parameters: dict[str, object]) -> None:
    """Load or reload `name` (REST and gRPC's RepositoryModelLoad): 400 for an invalid name, model control
    off, a parameter (none is supported) or a model that cannot be loaded."""
    checked(name)
    _explicit_control(state)
    _check_parameters("load", parameters, {})
    try:
        await state.registry.load(name)
    except InvalidModelName as err:  # a link out of the repository
        raise invalid_name(err) from None
    except ModelLoadError as err:
        raise bad_request(f"failed to load {name!r}: {state.registry.public(err)}") from None


@router.post(
    "/v2/repository/models/{name}/unload",
    responses={
        400: {"description": "Invalid model name, an unsupported parameter, or model control off while polling"},
        404: {"description": "Model not served"},
    },
)
async def unload(name: str, request: Request, state: StateDep) -> JSONResponse:
    """Stop serving `name`; requests already admitted on it finish first. The body, if any, may hold
    `{"parameters": {"unload_dependents": false}}` (nothing depends on a model here)."""
    checked(name)
    await unload_model(state, name, await _parameters(request, "unload"))
    return JSONResponse({})


async def unload_model(state: ServiceState, name: str, parameters: dict[str, object]) -> None:
    """Stop serving `name` (REST and gRPC's RepositoryModelUnload): 400 for an invalid name, model control
    off or a parameter other than `unload_dependents: false`; 404 when it is not served."""
    checked(name)
    _explicit_control(state)
    _check_parameters("unload", parameters, _UNLOAD_PARAMETERS)
    await state.registry.unload(name)


def _explicit_control(state: StateDep) -> None:
    """Triton's rule: explicit load/unload only when the repository is not polled (or a poll would undo them)."""
    if state.settings.repository_poll_s > 0:
        raise ApiError(
            400,
            "model_control_disabled",
            "explicit model load and unload are off while the repository is polled (repository_poll_s > 0): "
            "add or remove version folders instead",
        )


async def _parameters(request: Request, route: str) -> dict[str, object]:
    """The parameters of a load/unload's small JSON body (the body middleware caps its size): `{}` or
    `{"parameters": {...}}`, else 400."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        message: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad_request(f'{route}: the body must be JSON: {{}} or {{"parameters": {{}}}}') from None
    if not isinstance(message, dict) or set(message) - {"parameters"}:
        raise bad_request(f"{route}: the body may only hold 'parameters'")
    parameters = message.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request(f"{route}: 'parameters' must be an object")
    return parameters


def _check_parameters(route: str, parameters: dict[str, object], allowed: dict[str, object]) -> None:
    """Refuse any parameter but the `allowed` ones, each at its one accepted value (400)."""
    for key, value in parameters.items():
        if key not in allowed:
            raise bad_request(f"{route}: parameter {key[:80]!r} is not supported")
        if value != allowed[key] or type(value) is not type(allowed[key]):
            raise bad_request(f"{route}: parameter {key!r} can only be {json.dumps(allowed[key])}")
