"""The exits stand on timm's public forward path: a timm release that moved the prelude or the pooling
would fail here, not diverge silently (the reason `timm` is pinned to a minor range in pyproject.toml)."""

import pytest
import timm
import torch

from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import HeadConfig
from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig


def tiny_backbone(num_classes: int = 0, **kwargs) -> timm.models.VisionTransformer:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        exportable=True,
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=32,
        num_heads=2,
        **kwargs,
    )


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({}, id="class-token"),
        pytest.param({"reg_tokens": 4}, id="class-token-and-registers"),
        pytest.param({"global_pool": "avg", "fc_norm": False}, id="avg-pool"),
        pytest.param({"class_token": False, "global_pool": "avg", "fc_norm": False}, id="no-prefix-tokens"),
    ],
)
def test_the_last_exit_equals_timms_own_forward_head_of_forward_features(variant: dict) -> None:
    model = DynamicViT(
        tiny_backbone(**variant),
        DynamicViTConfig(num_classes=6, exits=[1, 3], petl="none", heads=[HeadConfig("mlp"), HeadConfig("linear")]),
    ).eval()
    reference = tiny_backbone(**variant, num_classes=6).eval()
    reference.load_state_dict(model.backbone.state_dict(), strict=False)  # the frozen blocks and norms
    reference.head.load_state_dict(model.heads[-1].fc.state_dict())  # the last exit's classifier
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x))
        got = model(x)[-1]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["map", ""])
def test_an_exit_head_refuses_a_pooling_it_cannot_reproduce(pool: str) -> None:
    backbone = tiny_backbone()
    backbone.global_pool = pool
    with pytest.raises(ConfigError, match="global_pool"):
        DynamicViT(backbone, DynamicViTConfig(num_classes=6, exits=[3], petl="none"))
