"""PETL methods: one module each, one interface (see ``base.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.petl.adapter import AdapterConfig, inject_adapter
from dynadapter.models.petl.base import PetlConfig, PetlLayer, merge_all, petl_layers, unmerge_all
from dynadapter.models.petl.lora import LoraConfig, inject_lora
from dynadapter.models.petl.repadapter import RepAdapterConfig, inject_repadapter


@dataclass(frozen=True)
class PetlMethod:
    config_cls: type[PetlConfig]
    #: replaces submodules of the backbone's ``blocks`` in place
    inject: Callable[[nn.Sequential, Any], None]


PETL_METHODS: dict[str, PetlMethod] = {
    "adapter": PetlMethod(AdapterConfig, inject_adapter),
    "lora": PetlMethod(LoraConfig, inject_lora),
    "repadapter": PetlMethod(RepAdapterConfig, inject_repadapter),
}


def make_petl_config(method: str, **options: Any) -> PetlConfig:
    if method not in PETL_METHODS:
        raise ConfigError(f"unknown PETL method {method!r}; choose from {sorted(PETL_METHODS)} or 'none'")
    try:
        return PETL_METHODS[method].config_cls(**options)
    except TypeError as err:  # an option the method does not have
        fields = sorted(PETL_METHODS[method].config_cls.__dataclass_fields__)
        raise ConfigError(f"--petl-arg for {method}: {err}; its options are {fields}") from err


def inject_petl(blocks: nn.Sequential, method: str, config: PetlConfig) -> None:
    PETL_METHODS[method].inject(blocks, config)


__all__ = [
    "PETL_METHODS",
    "PetlConfig",
    "PetlLayer",
    "PetlMethod",
    "inject_petl",
    "make_petl_config",
    "merge_all",
    "petl_layers",
    "unmerge_all",
]
