"""Triton's model repository extension: list the repository, load (or reload) and unload models, live.

Behind the API key when keys are set. A load opens and warms the versions the policy picks before they
take traffic; requests in flight finish on the version they started on (dynadapter.service.registry).
"""

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from dynadapter.contract.model_repository import ModelLoadError
from dynadapter.service.deps import StateDep, require_api_key
from dynadapter.service.errors import bad_request

router = APIRouter(tags=["oip"], dependencies=[Depends(require_api_key)])


@router.post("/v2/repository/index")
async def index(state: StateDep) -> list[dict[str, str]]:
    """Every model of the repository (or of the `models` setting): each served version READY, else UNAVAILABLE."""
    return state.registry.index()


@router.post(
    "/v2/repository/models/{name}/load",
    responses={
        400: {"description": "The model cannot be loaded (the message says why); what served before still does"}
    },
)
async def load(name: str, state: StateDep) -> JSONResponse:
    """Load `name`, or reload it in the versions the policy picks now; answers once they are warm and serving."""
    try:
        await state.registry.load(name)
    except ModelLoadError as err:
        raise bad_request(f"failed to load {name!r}: {err}") from None
    return JSONResponse({})


@router.post("/v2/repository/models/{name}/unload", responses={404: {"description": "Model not served"}})
async def unload(name: str, state: StateDep) -> JSONResponse:
    """Stop serving `name`; requests already admitted on it finish first."""
    await state.registry.unload(name)
    return JSONResponse({})
