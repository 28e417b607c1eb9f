"""Every PETL method against the same checks, PEFT-style: one table of (method, options) cases."""

from dataclasses import dataclass, field

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynadapter.errors import MergeError
from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig, ForwardSparsity
from dynadapter.models.flops import segment_macs
from dynadapter.models.petl import PetlLayer, make_petl_config, merge_all, petl_layers, unmerge_all
from dynadapter.models.petl.lora import LoraConfig
from tests.support.tiny import randomize_trainable, tiny_model


@dataclass
class Case:
    method: str
    options: dict = field(default_factory=dict)
    mergeable: bool = True
    per_block: int = 1  # PETL layers each block should get

    def build(self, seed: int = 0, **config) -> DynamicViT:
        return tiny_model(self.method, seed=seed, petl_options=self.options, **config)


CASES = [
    pytest.param(Case("adapter", mergeable=False), id="adapter"),
    pytest.param(Case("lora"), id="lora"),
    pytest.param(Case("lora", {"rank": 2, "scale": 0.5, "targets": ["qkv", "fc1"]}, per_block=2), id="lora-qkv-fc1"),
    pytest.param(Case("repadapter", per_block=2), id="repadapter"),
    pytest.param(Case("repadapter", {"groups": 1}, per_block=2), id="repadapter-groups1"),
    pytest.param(
        Case("repadapter", {"groups": 4, "scale": 0.5, "targets": ["qkv", "proj", "fc1", "fc2"]}, per_block=4),
        id="repadapter-groups4-all",
    ),
]
MERGEABLE = [p for p in CASES if p.values[0].mergeable]
UNMERGEABLE = [p for p in CASES if not p.values[0].mergeable]
PLAIN = Case("none")
FLOP_CASES = [pytest.param(*p.values, False, id=f"{p.id}-unmerged") for p in CASES] + [
    pytest.param(*p.values, True, id=f"{p.id}-merged") for p in MERGEABLE
]


def unfuse_attention(model: nn.Module) -> None:
    # FlopCounterMode has no formula for the CPU flash-attention kernel behind SDPA (it counts 0),
    # so count attention through timm's explicit matmul path, which computes the same thing.
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


@pytest.mark.parametrize("case", CASES)
def test_identity_at_init(case: Case) -> None:
    model, plain = case.build(seed=3).eval(), PLAIN.build(seed=3).eval()
    plain.heads.load_state_dict(model.heads.state_dict())
    layers = petl_layers(model)
    assert len(layers) == case.per_block * len(model.backbone.blocks)
    assert all(layer.mergeable == case.mergeable for layer in layers)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for got, want in zip(model(x), plain(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", MERGEABLE)
def test_merge_and_unmerge_keep_the_logits(case: Case) -> None:
    model = case.build().eval()
    randomize_trainable(model)
    frozen = {n: t.clone() for n, t in model.backbone.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge_all(model)
        merged = model(x)
        unmerge_all(model)
        after = model(x)
    for b, m, a in zip(before, merged, after, strict=True):
        torch.testing.assert_close(m, b, rtol=0, atol=1e-4)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    # RepAdapter restores the weights it kept; LoRA subtracts its update again (float rounding)
    restored, atol = model.backbone.state_dict(), 0 if case.method == "repadapter" else 1e-6
    assert restored.keys() == frozen.keys()
    assert all(torch.allclose(restored[n], t, rtol=0, atol=atol) for n, t in frozen.items())


@pytest.mark.parametrize("case", MERGEABLE)
def test_merge_twice_and_unmerge_twice_act_once(case: Case) -> None:
    model = case.build().eval()
    randomize_trainable(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge_all(model)
        once, merged_weights = model(x), {n: t.clone() for n, t in model.state_dict().items()}
        for layer in petl_layers(model):
            layer.merge()
        twice = model(x)
        assert all(torch.equal(t, merged_weights[n]) for n, t in model.state_dict().items())
        unmerge_all(model)
        for layer in petl_layers(model):
            layer.unmerge()
        after = model(x)
    for b, o, t, a in zip(before, once, twice, after, strict=True):
        torch.testing.assert_close(t, o, rtol=0, atol=0)
        torch.testing.assert_close(o, b, rtol=0, atol=1e-4)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert not any(layer.merged for layer in petl_layers(model))


@pytest.mark.parametrize("case", MERGEABLE)
def test_unmerge_without_merge_is_a_no_op(case: Case) -> None:
    model = case.build().eval()
    randomize_trainable(model)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    for layer in petl_layers(model):
        layer.unmerge()
    assert not any(layer.merged for layer in petl_layers(model))
    assert all(torch.equal(t, state[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("case", MERGEABLE)
def test_merge_refuses_a_non_finite_update_and_leaves_every_weight(case: Case, value: float) -> None:
    model = case.build().eval()
    randomize_trainable(model)
    last = petl_layers(model)[-1]  # the earlier layers are fine: none of them may be merged either
    name, param = last.update_parameters()[0]
    with torch.no_grad():
        param.view(-1)[0] = value
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(MergeError, match=rf"non-finite update weights \['{name}'\]"):
        merge_all(model)
    with pytest.raises(MergeError, match="refusing to merge"):
        last.merge()
    assert not any(layer.merged for layer in petl_layers(model))
    after = model.state_dict()
    assert after.keys() == state.keys()
    for n, t in state.items():
        torch.testing.assert_close(after[n], t, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("case", MERGEABLE)
def test_merged_model_costs_what_the_backbone_costs(case: Case) -> None:
    model, plain = case.build(), PLAIN.build()
    assert all(m > p for m, p in zip(segment_macs(model), segment_macs(plain), strict=True))
    merge_all(model)
    assert all(layer.merged and layer.extra_macs(17) == 0 for layer in petl_layers(model))
    assert segment_macs(model) == segment_macs(plain)


@pytest.mark.parametrize("case, merged", FLOP_CASES)
def test_analytic_count_matches_torch_flop_counter(case: Case, merged: bool) -> None:
    model = case.build().eval()
    if merged:
        merge_all(model)
    unfuse_attention(model)
    analytic, x = segment_macs(model), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for k in range(model.num_exits):
            with FlopCounterMode(display=False) as counter:
                x, _ = model.forward_stage(k, x)
            # torch counts 2 FLOPs per multiply-add; the paper (and fvcore) count 1.
            assert counter.get_total_flops() == 2 * analytic[k]


@pytest.mark.parametrize("case", CASES)
def test_a_step_trains_the_petl_and_leaves_the_backbone_bitwise_unchanged(case: Case) -> None:
    model = case.build().train()
    randomize_trainable(model)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    trainable = set(model.trainable_state_dict())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits = model(torch.randn(2, 3, 32, 32))
    sum(nn.functional.cross_entropy(lg, torch.tensor([0, 1])) for lg in logits).backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) != (n in trainable) for n in before)


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_holds_only_petl_and_head_parameters(case: Case) -> None:
    model = case.build()
    petl = {
        f"{name}.{p}"
        for name, layer in model.named_modules()
        if isinstance(layer, PetlLayer)
        for p, _ in layer.named_parameters()
        if not p.startswith("base_layer.")
    }
    keys = set(model.trainable_state_dict())
    assert petl and petl <= keys
    assert all(k in petl or k.startswith("heads.") for k in keys)


@pytest.mark.parametrize("case", UNMERGEABLE)
def test_unmergeable_methods_refuse_to_merge(case: Case) -> None:
    with pytest.raises(NotImplementedError):
        petl_layers(case.build())[0].merge()


@pytest.mark.parametrize("case", CASES)
def test_forward_sparsity_reaches_the_petl_dropout(case: Case) -> None:
    model = case.build(forward_sparsity=ForwardSparsity(shallow=0.3, deep=0.0)).train()
    for k, rate in enumerate([0.3, 0.2, 0.1, 0.0]):
        for layer in petl_layers(model.stage_blocks(k)):
            drops = [
                m for n, m in layer.named_modules() if isinstance(m, nn.Dropout) and not n.startswith("base_layer")
            ]
            assert drops and all(d.training for d in drops)
            assert [d.p for d in drops] == pytest.approx([rate] * len(drops))


@pytest.mark.parametrize("method", ["adapter", "lora", "repadapter"])
def test_petl_and_head_dropout_are_floors_under_forward_sparsity(method: str) -> None:
    """``--petl-dropout`` / ``--head-dropout``: each branch gets max(its stage's sparsity rate, the floor)."""
    model = tiny_model(
        method,
        petl_options={"dropout": 0.15},
        head_dropout=0.25,
        forward_sparsity=ForwardSparsity(shallow=0.3, deep=0.0),
    ).train()
    for k, (petl_rate, head_rate) in enumerate([(0.3, 0.3), (0.2, 0.25), (0.15, 0.25), (0.15, 0.25)]):
        petl = [
            m.p
            for layer in petl_layers(model.stage_blocks(k))
            for n, m in layer.named_modules()
            if isinstance(m, nn.Dropout) and not n.startswith("base_layer")
        ]
        head = [m.p for m in model.heads[k].modules() if isinstance(m, nn.Dropout)]
        assert petl and petl == pytest.approx([petl_rate] * len(petl))
        assert head and head == pytest.approx([head_rate] * len(head))


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("adapter", {"dim": 0}),
        ("lora", {"rank": 0}),
        ("lora", {"dropout": 1.0}),
        ("lora", {"targets": []}),
        ("lora", {"targets": ["qkv", "head"]}),
        ("lora", {"targets": ["qkv", "qkv"]}),
        ("repadapter", {"dim": 0}),
        ("repadapter", {"dim": 8, "groups": 3}),
        ("repadapter", {"targets": ["norm1"]}),
    ],
)
def test_bad_configs_are_rejected(method: str, options: dict) -> None:
    with pytest.raises(ValueError):
        make_petl_config(method, **options)


def test_repadapter_groups_must_divide_the_layer_width() -> None:
    with pytest.raises(ValueError, match="width 32"):
        Case("repadapter", {"dim": 6, "groups": 3}).build()


def test_targets_accept_a_name_or_a_list() -> None:
    assert LoraConfig(targets="fc1").targets == ("fc1",)
    assert LoraConfig(targets=["qkv", "fc2"]).targets == ("qkv", "fc2")  # as read back from config.json


def test_repadapter_merges_into_a_layer_without_bias() -> None:
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        exportable=True,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        qkv_bias=False,
    )
    model = DynamicViT(vit, DynamicViTConfig(num_classes=3, exits=[1, 2], petl="repadapter")).eval()
    randomize_trainable(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge_all(model)
        merged = model(x)
        unmerge_all(model)
    for b, m in zip(before, merged, strict=True):
        torch.testing.assert_close(m, b, rtol=0, atol=1e-4)
    assert all(block.attn.qkv.base_layer.bias is None for block in model.backbone.blocks)
