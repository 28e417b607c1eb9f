import pytest
import torch

from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig, ForwardSparsity
from dynadapter.models.petl.adapter import AdapterBlock
from tests.support.tiny import randomize_trainable, tiny_model, tiny_vit


def test_every_exit_returns_logits_of_the_right_shape() -> None:
    model = tiny_model(num_classes=7).eval()
    logits = model(torch.randn(3, 3, 32, 32))
    assert [tuple(t.shape) for t in logits] == [(3, 7)] * 4


def test_adapter_is_identity_at_init() -> None:
    plain, adapted = tiny_vit(seed=3).eval(), tiny_model(seed=3).eval()
    x = torch.randn(2, 3, 32, 32)
    assert all(isinstance(b, AdapterBlock) for b in adapted.backbone.blocks)
    ((patches, prefix),) = plain.forward_intermediates(
        x, indices=[0], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
    )
    torch.testing.assert_close(adapted.forward_stage(0, x)[0], torch.cat([prefix, patches], 1), rtol=0, atol=0)


def test_backbone_is_frozen_and_bitwise_unchanged_by_a_step() -> None:
    model = tiny_model().train()
    before = {n: t.clone() for n, t in model.backbone.state_dict().items() if "adapter" not in n}
    randomize_trainable(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = sum(torch.nn.functional.cross_entropy(lg, torch.tensor([0, 1])) for lg in model(torch.randn(2, 3, 32, 32)))
    loss.backward()
    opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(not p.requires_grad for n, p in model.backbone.named_parameters() if "adapter" not in n)


def test_checkpoint_holds_only_petl_and_head_parameters() -> None:
    model = tiny_model()
    keys = model.trainable_state_dict().keys()
    assert keys and all(".adapter." in k or k.startswith("heads.") for k in keys)
    assert not any("heads.3.norm" in k for k in keys)  # the last exit reuses the frozen final norm


def test_trainable_state_round_trips_and_rejects_a_foreign_checkpoint() -> None:
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    randomize_trainable(a)
    b.load_trainable_state_dict(a.trainable_state_dict())
    x = torch.randn(2, 3, 32, 32)
    for la, lb in zip(a.eval()(x), b.eval()(x), strict=True):
        torch.testing.assert_close(la, lb)
    with pytest.raises(ValueError, match="does not match"):
        tiny_model(petl="none").load_trainable_state_dict(a.trainable_state_dict())


def test_forward_sparsity_rates_fall_with_depth() -> None:
    model = tiny_model(forward_sparsity=ForwardSparsity(shallow=0.3, deep=0.0))
    rates = [model.heads[k].drop.p for k in range(4)]
    assert rates == pytest.approx([0.3, 0.2, 0.1, 0.0])
    assert model.backbone.blocks[0].adapter.drop.p == pytest.approx(0.3)


def test_train_mode_leaves_the_frozen_backbone_in_eval() -> None:
    model = tiny_model().train()
    assert model.heads[0].training and model.backbone.blocks[0].adapter.training
    assert not model.backbone.blocks[0].base_layer.training and not model.backbone.training


@pytest.mark.parametrize("exits", [[2, 3], [1, 1, 4], [0, 4]])
def test_bad_exits_are_rejected(exits: list[int]) -> None:
    with pytest.raises(ValueError):
        DynamicViT(tiny_vit(depth=4), DynamicViTConfig(num_classes=3, exits=exits))


def test_config_round_trips_through_a_dict() -> None:
    cfg = DynamicViTConfig(num_classes=3, exits=[2, 4])
    assert DynamicViTConfig(**cfg.to_dict()) == cfg


def test_head_spec_parses_per_exit_kinds_and_rejects_mismatches() -> None:
    from dynadapter.models.balanced_heads import HeadConfig, parse_head_spec

    assert parse_head_spec("transformer:2,mlp:3,linear", 3) == [
        HeadConfig("transformer", depth=2),
        HeadConfig("mlp", width=3.0),
        HeadConfig("linear"),
    ]
    assert parse_head_spec("balanced", 4) == [
        HeadConfig("transformer", depth=1),
        HeadConfig("mlp", width=2.0),
        HeadConfig("mlp", width=1.0),
        HeadConfig("linear"),
    ]
    assert parse_head_spec("balanced", 1) == [HeadConfig("linear")]
    with pytest.raises(ValueError):
        parse_head_spec("mlp,linear", 3)
    with pytest.raises(ValueError):
        parse_head_spec("conv,linear", 2)
