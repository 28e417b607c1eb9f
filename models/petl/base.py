"""What every PETL method shares: a config, injection by module replacement, merge/unmerge.

Methods follow PEFT's shape: a config dataclass validated in ``__post_init__``, wrapper layers that
hold the frozen ``base_layer`` and are swapped in for named submodules (never by patching
``forward``), and ``merge()``/``unmerge()`` where the algebra allows it. As PEFT's layers, merge and
unmerge are guarded here, once for every method: each is idempotent (the ``merged`` flag), and
merge refuses a non-finite update before it touches a weight (PEFT's ``safe_merge``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from dynadapter.errors import ConfigError, MergeError


@dataclass
class PetlConfig:
    """Options shared by the methods.

    Args:
        scale: multiplier ``s`` on the method's update.
        dropout: dropout inside the method's branch; ``DynamicViT`` may raise it per stage
            (forward sparsity), so this is the deepest stage's rate.
    """

    scale: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class PetlLayer(nn.Module):
    """A wrapper around a frozen module that adds a trainable, identity-initialised update."""

    #: True when ``merge()`` folds the update into the frozen weights.
    mergeable: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.merged = False

    def set_dropout(self, p: float) -> None:
        """Set the dropout rate of the trainable branch (used for forward sparsity)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Dropout) and not name.startswith("base_layer"):
                m.p = p

    def extra_macs(self, tokens: int) -> int:
        """Multiply-adds this layer adds to the frozen layer it wraps, for one image of ``tokens``
        tokens, as it runs now (0 once merged)."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen base layer, after which it runs as the bare base layer.

        Idempotent: merging a merged layer changes nothing. Raises MergeError, with every weight left
        as it was, when a parameter of the update is NaN or infinite (it would poison the frozen
        weight, and unmerge could not undo it), and NotImplementedError for a method that cannot
        merge.
        """
        self.check_mergeable()
        if self.merged:
            return
        self.merge_update()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take a merged update out of the base layer again. Idempotent: a layer that is not merged
        (never merged, or unmerged already) is left as it is. NotImplementedError as ``merge``."""
        self.require_mergeable()
        if not self.merged:
            return
        self.unmerge_update()
        self.merged = False

    def update_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The method's own (trainable) parameters: everything but the frozen base layer's."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("base_layer.")]

    def require_mergeable(self) -> None:
        if not self.mergeable:
            raise NotImplementedError(f"{type(self).__name__} cannot be merged into the backbone")

    def check_mergeable(self) -> None:
        """Raise what ``merge`` would raise before it changes anything (NotImplementedError, MergeError)."""
        self.require_mergeable()
        broken = [name for name, p in self.update_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise MergeError(f"{type(self).__name__}: non-finite update weights {broken}; refusing to merge them")

    def merge_update(self) -> None:
        """The method's fold into ``base_layer`` (called once per merge, weights known finite)."""
        raise NotImplementedError

    def unmerge_update(self) -> None:
        """The method's inverse of ``merge_update``."""
        raise NotImplementedError


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


#: where each adaptable linear layer sits inside a timm ``Block``
LINEAR_TARGETS: dict[str, str] = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def check_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """A config's ``targets`` as a tuple of distinct names from ``LINEAR_TARGETS``."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or len(set(targets)) < len(targets) or not set(targets) <= LINEAR_TARGETS.keys():
        raise ConfigError(f"targets must be distinct names from {list(LINEAR_TARGETS)}, got {list(targets)}")
    return targets


def wrap_linears(blocks: nn.Sequential, targets: Sequence[str], wrap: Callable[[nn.Linear], PetlLayer]) -> None:
    """Replace each block's target linear layers by ``wrap(layer)``; the timm Blocks stay in place."""
    for i, block in enumerate(blocks):
        if not isinstance(block, Block):
            raise TypeError(f"expected timm Blocks, block {i} is {type(block).__name__}")
        for target in targets:
            path = LINEAR_TARGETS[target]
            layer = block.get_submodule(path)
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"block {i}: {path} is {type(layer).__name__}, not nn.Linear")
            replace_module(block, path, wrap(layer))


def petl_layers(model: nn.Module) -> list[PetlLayer]:
    return [m for m in model.modules() if isinstance(m, PetlLayer)]


def merge_all(model: nn.Module) -> None:
    """Fold every mergeable PETL layer into its frozen base layer (idempotent). Every layer is checked
    first, so a MergeError (as ``merge``) leaves the whole model as it was, not half merged."""
    layers = [layer for layer in petl_layers(model) if layer.mergeable]
    for layer in layers:
        layer.check_mergeable()
    for layer in layers:
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    """Undo ``merge_all`` (idempotent)."""
    for layer in petl_layers(model):
        if layer.mergeable:
            layer.unmerge()
