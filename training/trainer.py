"""The training loop: frozen backbone, PETL + exit heads trained jointly (README, "Method").

AdamW with a linear warm-up then cosine decay, the adaptive per-exit loss weighting, forward
sparsity (set on the model) and backward sparsity (gradient masking between backward and step).
After the last epoch the validation split is calibrated and the run directory is complete.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dynadapter.contract import Preprocessing
from dynadapter.errors import DataError
from dynadapter.models.balanced_heads import parse_head_spec
from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig, ForwardSparsity
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training import distributed
from dynadapter.training import run_dir as rd
from dynadapter.training.adaptive_prioritization import AdaptivePrioritization
from dynadapter.training.backward_sparsity import BackwardSparsity
from dynadapter.training.calibration import calibrate
from dynadapter.training.data import Split, load_raw, to_tensors
from dynadapter.training.evaluate import exit_accuracies, exit_logits
from dynadapter.training.options import TrainOptions

log = logging.getLogger(__name__)

#: ``--amp-dtype`` choices, as in timm's train.py. bfloat16 needs no loss scaling; float16 does.
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(opts: TrainOptions, device: torch.device) -> torch.autocast:
    """Mixed precision for the forward pass when ``amp`` is on (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[opts.amp_dtype], enabled=opts.amp)


def default_exits(depth: int, stages: int = 4) -> list[int]:
    """Exits after every ``depth / stages`` blocks (3, 6, 9, 12 for a 12-block ViT)."""
    return sorted({max(1, round(depth * (k + 1) / stages)) for k in range(stages)})


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build(opts: TrainOptions, num_classes: int) -> tuple[DynamicViT, rd.BackboneSpec]:
    spec = rd.BackboneSpec(
        opts.backbone, opts.img_size, opts.backbone_weights, opts.pretrained, opts.backbone_kwargs or None, opts.seed
    )
    backbone = spec.build()
    depth = len(backbone.blocks)
    exits = [depth] if opts.static else (opts.exits or default_exits(depth))
    heads = parse_head_spec(opts.heads, len(exits))
    config = DynamicViTConfig(
        num_classes, exits, opts.petl, opts.petl_options, heads, ForwardSparsity(shallow=opts.forward_sparsity)
    )
    return DynamicViT(backbone, config), spec


def preprocessing_for(model: DynamicViT, img_size: int) -> Preprocessing:
    cfg = model.backbone.pretrained_cfg or {}
    return Preprocessing.square(img_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))


def train(opts: TrainOptions) -> Path:
    """Train, calibrate on the validation split, and write the run directory; returns its path."""
    device = distributed.resolve_device(opts.device)
    world = distributed.init_world(device)
    torch.manual_seed(opts.seed)
    raw = load_raw(opts.data, opts.seed)
    model, spec = build(opts, len(raw.labels))
    pre = preprocessing_for(model, opts.img_size)
    train_split, val_split = (to_tensors(raw.splits[s], pre) for s in ("train", "val"))
    if len(train_split.targets) == 0:
        raise DataError(f"{opts.data}: the train split is empty")
    out = Path(opts.out)
    if world.is_main:
        config = {
            "data": opts.data,
            "labels": raw.labels,
            "preprocessing": pre.model_dump(mode="json"),
            "backbone": asdict(spec),
            "model": model.config.to_dict(),
            "train": opts.record(),
            "world_size": world.size,
            "device": str(device),
        }
        rd.write_config(out, config)
        rd.reset_metrics(out)
    model.to(device)
    fit(model, train_split, val_split, opts, out, world)
    if world.is_main:
        rd.save_checkpoint(out, model)
        if len(val_split.targets):
            cal = calibrate(
                exit_logits(model, val_split.images),
                val_split.targets,
                deployed_cumulative_gflops(model),
                early_heads_gflops(model),
            )
            rd.write_calibration(out, cal)
    distributed.shutdown(world)
    return out


def fit(
    model: DynamicViT,
    train_split: Split,
    val_split: Split,
    opts: TrainOptions,
    out: Path,
    world: distributed.World | None = None,
) -> None:
    """Train ``model`` where it lies (CPU or a GPU); calibration and checkpoints stay in float32."""
    world = world or distributed.World()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    prioritization = AdaptivePrioritization(gamma=opts.loss_gamma, distill_weight=opts.distill)
    backward_sparsity = BackwardSparsity(rate=opts.backward_sparsity)
    net = distributed.wrap(model, world, device)
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    # Loss scaling keeps float16 gradients from underflowing; with bfloat16 or float32 it is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp and opts.amp_dtype == "float16")
    n = len(train_split.targets)
    steps_per_epoch = math.ceil(n / opts.batch_size)
    total = steps_per_epoch * opts.epochs
    warmup = min(total, round(opts.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, warmup))
    # The same generators on every rank: identical shuffles and backward-sparsity masks (the masks are
    # drawn where the gradients lie).
    gen = torch.Generator().manual_seed(opts.seed)
    mask_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(opts.seed)
    bar = tqdm(total=total, desc="train", unit="step", disable=not (opts.progress and world.is_main))
    step = 0
    for epoch in range(opts.epochs):
        model.train()
        start, losses, exit_losses = time.perf_counter(), [], []
        for idx in torch.randperm(n, generator=gen).split(opts.batch_size):
            local = world.shard(idx)
            images, targets = (
                t[local].to(device, non_blocking=True) for t in (train_split.images, train_split.targets)
            )
            with autocast(opts, device):
                logits = net(images)
            loss, per_exit = prioritization([z.float() for z in logits], targets, step / total)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            backward_sparsity.apply(params, mask_gen)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            loss_value, *per_exit = world.mean([loss.item(), *per_exit])
            losses.append(loss_value)
            exit_losses.append(per_exit)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}")
        if world.is_main:
            record = {
                "epoch": epoch + 1,
                "step": step,
                "loss": sum(losses) / len(losses),
                "exit_loss": [sum(col) / len(col) for col in zip(*exit_losses, strict=True)],
                "exit_weights": prioritization.weights(step / total, model.num_exits).tolist(),
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.perf_counter() - start, 2),
            }
            if len(val_split.targets):
                with autocast(opts, device):
                    record["val_acc"] = exit_accuracies(exit_logits(model, val_split.images), val_split.targets)
            rd.append_metrics(out, record)
            log.info("epoch %d: %s", epoch + 1, record)
    bar.close()
