"""The training loop: frozen backbone, PETL + exit heads trained jointly (README, "Method").

AdamW with a linear warm-up then cosine decay, the adaptive per-exit loss weighting, forward
sparsity (set on the model) and backward sparsity (gradient masking between backward and step).
Images stream from disk in a DataLoader (training/data/); under torchrun a DistributedSampler gives
each process its share of every global batch. After each epoch the validation objective decides
which checkpoint is kept (`VAL_OBJECTIVE`), the state to ``--resume`` from is written, and a
non-finite loss stops the run. After the last epoch the kept checkpoint is calibrated on the
validation split and the run directory is complete. However a run stops (an error, Ctrl-C, SIGTERM),
its pixel caches are removed: SIGTERM and SIGINT stop the run at its next step (`stop_signals_raise`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from timm.data import Mixup
from tqdm.auto import tqdm

from dynadapter.contract import Preprocessing
from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import parse_head_spec
from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig, ForwardSparsity
from dynadapter.training import distributed
from dynadapter.training import run_dir as rd
from dynadapter.training.adaptive_prioritization import AdaptivePrioritization
from dynadapter.training.augment import batch_mixer, criterion, seeded
from dynadapter.training.backward_sparsity import BackwardSparsity
from dynadapter.training.calibration_set import calibrate_set, calibration_logits, mode_text
from dynadapter.training.data import ImageDataset, Splits, prepare_splits, read_dataset, stream
from dynadapter.training.evaluate import exit_accuracies, loader_logits
from dynadapter.training.exit_health import warning_lines
from dynadapter.training.head_init import standardise_heads
from dynadapter.training.linear_probe import probe_initialise
from dynadapter.training.options import TrainOptions, default_exits
from dynadapter.training.wise_ft import choose_alpha

log = logging.getLogger(__name__)

#: ``--amp-dtype`` choices, as in timm's train.py. bfloat16 needs no loss scaling; float16 does.
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(opts: TrainOptions, device: torch.device) -> torch.autocast:
    """Mixed precision for the forward pass when ``amp`` is on (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[opts.amp_dtype], enabled=opts.amp)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build(opts: TrainOptions, num_classes: int) -> tuple[DynamicViT, rd.BackboneSpec]:
    spec = rd.BackboneSpec(
        opts.backbone, opts.img_size, opts.backbone_weights, opts.pretrained, opts.backbone_kwargs or None, opts.seed
    )
    backbone = spec.build()
    check_img_size(backbone, opts.img_size)
    depth = len(backbone.blocks)
    exits = [depth] if opts.static else (opts.exits or default_exits(depth))
    if exits[-1] > depth or exits != sorted(set(exits)):
        raise ConfigError(f"--exits {exits}: exits must increase and stay within the backbone's {depth} blocks")
    heads = parse_head_spec(opts.heads, len(exits))
    if opts.head_init == "probe":  # every head holds its probe in a linear path (config.json rebuilds it)
        heads = [dataclasses.replace(h, linear_path=True) for h in heads]
    if opts.petl_dropout and "dropout" in opts.petl_options:
        raise ConfigError("give the PETL dropout once: --petl-dropout P or --petl-arg dropout=P")
    petl_options = opts.petl_options | ({"dropout": opts.petl_dropout} if opts.petl_dropout else {})
    sparsity = ForwardSparsity(shallow=opts.forward_sparsity)
    config = DynamicViTConfig(num_classes, exits, opts.petl, petl_options, heads, sparsity, opts.head_dropout)
    return DynamicViT(backbone, config), spec


def check_img_size(backbone: torch.nn.Module, img_size: int) -> None:
    """ConfigError unless ``img_size`` is a whole number of the backbone's patches."""
    patch = backbone.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if img_size < patch or img_size % patch:
        fits = max(patch, round(img_size / patch) * patch)
        raise ConfigError(f"--img-size {img_size} is not a multiple of the backbone's patch size {patch}: use {fits}")


def preprocessing_for(model: DynamicViT, img_size: int) -> Preprocessing:
    cfg = model.backbone.pretrained_cfg or {}
    return Preprocessing.square(img_size, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))


#: The validation objective that picks the checkpoint kept (``--keep best``): the mean accuracy of
#: the exits on the val split (every exit serves some images), ties broken by the lower mean
#: cross-entropy of the exits. Higher tuples are better.
VAL_OBJECTIVE = "mean exit accuracy on val, then lower mean exit cross-entropy"


def val_objective(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """``VAL_OBJECTIVE`` from val logits [K, N, C] and targets [N]."""
    accuracy = sum(exit_accuracies(logits, targets)) / len(logits)
    loss = torch.stack([torch.nn.functional.cross_entropy(z, targets) for z in logits]).mean().item()
    return accuracy, -loss


def train(opts: TrainOptions) -> Path:
    """Train, calibrate on the validation split, and write the run directory; returns its path.

    Raises DataError / ConfigError before the first step for data or options that cannot work,
    and ConfigError when the loss becomes non-finite (the last good checkpoint stays).
    """
    check_recipe(opts)
    device = distributed.resolve_device(opts.device)
    world = distributed.init_world(device)
    if opts.batch_size % world.size:
        raise ConfigError(f"--batch-size {opts.batch_size} must be a multiple of the {world.size} processes")
    torch.manual_seed(opts.seed)
    out = Path(opts.out)
    resume = rd.read_resume(out) if opts.resume else None
    raw = read_dataset(opts, out if resume else None)
    model, spec = build(opts, len(raw.labels))
    pre = preprocessing_for(model, opts.img_size)
    splits: Splits | None = None
    with stop_signals_raise():
        try:
            splits = prepare_splits(raw, pre, opts, out, world, STOP.check)  # removes its caches if it fails
            if world.is_main and not resume:
                write_run_start(out, opts, splits, pre, model, spec, world, device)
            model.to(device)
            if opts.head_init == "probe" and not resume:
                probe_init(model, splits.datasets["train"], splits.datasets["val"], opts, out, world)
            if opts.head_init == "standardised" and not resume:  # every rank measures the same train split
                standardise_heads(model, splits.datasets["train"], opts.workers)
            fit(model, splits.datasets["train"], splits.datasets["val"], opts, out, world, resume)
            if world.is_main:
                finish(model, splits.datasets["val"], opts, out)
        except (Terminated, KeyboardInterrupt) as stop:
            by = signal.Signals(STOP.signum).name if STOP.signum is not None else type(stop).__name__
            log.warning("%s: the run stops; its pixel caches are removed", by)
            raise
        finally:
            if splits is not None:
                splits.close()
    distributed.shutdown(world)
    return out


def check_recipe(opts: TrainOptions) -> None:
    """ConfigError for switches that need another: WiSE-FT interpolates toward LP-FT's probe."""
    if opts.wise_ft and opts.head_init != "probe":
        raise ConfigError("--wise-ft interpolates toward the probe-initialised heads: add --head-init probe")


def probe_init(
    model: DynamicViT,
    train_data: ImageDataset,
    val_data: ImageDataset,
    opts: TrainOptions,
    out: Path,
    world: distributed.World,
) -> None:
    """LP-FT: the heads start as the probes of the initial (frozen backbone's) features; the main process
    records the fits and the starting trainable state (WiSE-FT's anchor). Every process fits the same probes
    (same data, deterministic L-BFGS), so that no rank starts elsewhere."""
    fits = probe_initialise(model, train_data, val_data, opts.workers)
    if world.is_main:
        rd.write_probe_init(out, fits, model.trainable_state_dict())


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that the run's ``finally`` blocks run (its pixel caches
    are removed); the exit status is 128 + 15, what a shell reports for a process SIGTERM ended."""


class StopRequest:
    """Which stop signal (SIGTERM or SIGINT) came during the run, if any. The handler only records it: an
    exception raised from a signal handler lands at any bytecode, and where that is a DataLoader worker's
    fork, an at-fork hook or a half-built iterator, Python prints it and goes on, or torch's teardown
    prints tracebacks. The run calls `check` at safe points instead (each training step, before each
    split is screened), so it stops within one step, cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self) -> None:
        """Raise the stop that came: `KeyboardInterrupt` for SIGINT, `Terminated` for SIGTERM."""
        if self.signum is not None:
            raise stop_exception(self.signum)


def stop_exception(signum: int) -> BaseException:
    """What a stop signal raises in the run: Ctrl-C's usual `KeyboardInterrupt`, else `Terminated`."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(128 + signum)


#: The stop request of the run in progress (one run at a time per process: signals are per process).
STOP = StopRequest()


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT are recorded in `STOP`, whose `check` raises `Terminated`
    or `KeyboardInterrupt` at the run's next safe point; the previous handlers are restored after.

    Python's default for SIGTERM ends the process at once, without ``finally`` or atexit: a run's disk
    cache would stay. Both signals go through one handler and stop the run at a safe point (see
    `StopRequest`). Signal handlers can only be set in the main thread: elsewhere this does nothing. A
    worker forked meanwhile inherits the handler; there it takes the signal's default action. A second
    signal while the first unwinds is ignored, so that the cleanup finishes.
    """
    STOP.signum = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked worker: as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_IGN)
        STOP.signum = signum  # raised by the run's next `STOP.check`

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, signal.SIG_DFL if before is None else before)


#: The signals that stop a run cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def write_run_start(
    out: Path,
    opts: TrainOptions,
    splits: Splits,
    pre: Preprocessing,
    model: DynamicViT,
    spec: rd.BackboneSpec,
    world: distributed.World,
    device: torch.device,
) -> None:
    """config.json, the split files, skipped.csv and a fresh metrics.jsonl; the summary goes to the log."""
    table = splits.summary()
    config = rd.RunConfig(
        data=opts.data,
        labels=splits.raw.labels,
        preprocessing=pre,
        backbone=spec,
        model=model.config,
        train=opts,
        data_summary=table,
        world_size=world.size,
        device=str(device),
        device_name=distributed.device_name(device),
    )
    if rd.clear_earlier_run(out):
        log.warning("%s held an earlier run: it is replaced (its checkpoint, metrics and eval reports removed)", out)
    rd.write_config(out, config)
    for name, files, labels in splits.file_lists():
        rd.write_split(out, name, files, labels)
    rd.write_skipped(out, splits.skipped)
    log.info("data: %s, %d classes", table["layout"], len(splits.raw.labels))
    if splits.raw.duplicates:
        log.info("  %d files reached more than once (links) are read once", splits.raw.duplicates)
    for name, per_class in table["images"].items():
        log.info(
            "  %-5s %6d images  %s  (%d skipped)", name, sum(per_class.values()), per_class, table["skipped"][name]
        )
    if splits.skipped:
        log.warning("%d unusable files left out: listed in %s", len(splits.skipped), out / rd.SKIPPED)


def finish(model: DynamicViT, val: ImageDataset, opts: TrainOptions, out: Path) -> None:
    """Calibrate the kept checkpoint on the calibration set (val, and its corrupted copies with
    ``--calibration-corrupted``; with ``wise_ft``, first move it to the WiSE-FT mix that validates best on
    that set), logging the modes and warning of deep exits that lose to earlier ones on val
    (training/exit_health.py); the run is complete, nothing is left to resume. Files are written last, so
    that a run stopped meanwhile finishes from the same kept checkpoint on ``--resume``."""
    model.load_trainable_state_dict(rd.read_checkpoint(out))
    wise = wise_ft(model, val, opts, out) if opts.wise_ft else None
    cal = calibrate_set(model, val, opts)
    if wise is not None:
        rd.write_wise_ft(out, wise)
        rd.save_checkpoint(out, model)
    rd.write_calibration(out, cal)
    for name, mode in cal["modes"].items():
        log.info("calibrated %s", mode_text(name, mode, cal["calibration"]))
    for line in warning_lines(cal["exit_health"]):
        log.warning(line)
    rd.remove_resume(out)


def wise_ft(model: DynamicViT, val: ImageDataset, opts: TrainOptions, out: Path) -> dict:
    """Leave ``model`` at the WiSE-FT mix of its probe-initialised and trained weights with the best
    `VAL_OBJECTIVE` on the calibration logits; returns wise_ft.json's record (`training.wise_ft.choose_alpha`)."""
    record = choose_alpha(
        model,
        rd.read_probe_init_state(out),
        model.trainable_state_dict(),
        lambda m: val_objective(*calibration_logits(m, val, opts)),
    )
    for row in record["alphas"]:
        log.info("WiSE-FT alpha %.2f: val mean exit accuracy %.4f, loss %.4f", *row.values())
    log.info("WiSE-FT keeps alpha %g (0 = the probe-initialised heads, 1 = the trained weights)", record["alpha"])
    return {"alpha": record["alpha"], "objective": VAL_OBJECTIVE, "alphas": record["alphas"]}


def fit(
    model: DynamicViT,
    train_data: ImageDataset,
    val_data: ImageDataset,
    opts: TrainOptions,
    out: Path,
    world: distributed.World | None = None,
    resume: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> None:
    """Train ``model`` where it lies (CPU or a GPU); calibration and checkpoints stay in float32.

    Each epoch appends to metrics.jsonl, saves the checkpoint when the validation objective
    improved (every epoch with ``--keep last``) and the state to resume from.
    """
    world = world or distributed.World()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    prioritization = AdaptivePrioritization(
        gamma=opts.loss_gamma, distill_weight=opts.distill, criterion=criterion(opts)
    )
    mixer = batch_mixer(opts, model.config.num_classes)
    backward_sparsity = BackwardSparsity(rate=opts.backward_sparsity)
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    # Loss scaling keeps float16 gradients from underflowing; with bfloat16 or float32 it is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp and opts.amp_dtype == "float16")
    # Every rank shuffles alike (seed + epoch) and takes every world.size-th image of the shuffle, so
    # global batch t holds the same images as batch t of a single process.
    sampler = torch.utils.data.DistributedSampler(
        train_data, num_replicas=world.size, rank=world.rank, shuffle=True, seed=opts.seed
    )
    # timm's Mixup mixes a batch with its own reverse: it needs even batches, so a short last one is dropped.
    loader = stream(train_data, opts.workers, opts.batch_size // world.size, sampler=sampler, drop_last=bool(mixer))
    check_mixing(mixer, opts.batch_size // world.size, len(loader))
    steps_per_epoch = len(loader)
    total = steps_per_epoch * opts.epochs
    warmup = min(total, round(opts.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, warmup))
    # The same generator on every rank: identical backward-sparsity masks (drawn where the gradients lie).
    mask_gen = torch.Generator(device).manual_seed(opts.seed)
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": None}
    if resume:
        state = restore(resume, model, opt, sched, scaler, mask_gen, out)
    net = distributed.wrap(model, world, device)
    val_loader = stream(val_data, opts.workers) if world.is_main else None
    bar = tqdm(
        total=total, initial=state["step"], desc="train", unit="step", disable=not (opts.progress and world.is_main)
    )
    for epoch in range(state["epoch"], opts.epochs):
        model.train()
        sampler.set_epoch(epoch)
        train_data.set_epoch(epoch)
        start, losses, exit_losses = time.perf_counter(), [], []
        for images, targets in loader:
            STOP.check()
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if mixer:
                with seeded(opts.seed, state["step"]):
                    images, targets = mixer(images, targets)
            with autocast(opts, device):
                logits = net(images)
            loss, per_exit = prioritization([z.float() for z in logits], targets, state["step"] / total)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            backward_sparsity.apply(params, mask_gen)
            scaler.step(opt)
            scaler.update()
            sched.step()
            state["step"] += 1
            loss_value, *per_exit = world.mean([loss.item(), *per_exit])
            if not math.isfinite(loss_value):
                raise ConfigError(diverged(loss_value, epoch + 1, state, opts, out))
            losses.append(loss_value)
            exit_losses.append(per_exit)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}")
        seconds = time.perf_counter() - start
        state["epoch"] = epoch + 1
        if world.is_main:
            assert val_loader is not None
            record = {
                "epoch": epoch + 1,
                "step": state["step"],
                "loss": sum(losses) / len(losses),
                "exit_loss": [sum(col) / len(col) for col in zip(*exit_losses, strict=True)],
                "exit_weights": prioritization.weights(state["step"] / total, model.num_exits).tolist(),
                "lr": sched.get_last_lr()[0],
                "seconds": round(seconds, 2),
                "images_per_s": round(len(train_data) / seconds, 1),
            }
            if (epoch + 1) % opts.val_every == 0 or epoch + 1 == opts.epochs:
                record |= end_of_epoch(model, val_loader, opts, out, state)
            rd.append_metrics(out, record)
            log.info("epoch %d: %s", epoch + 1, record)
            save_resume(out, model, opt, sched, scaler, mask_gen, state)
        STOP.check()
    bar.close()


def check_mixing(mixer: Mixup | None, batch_size: int, steps_per_epoch: int) -> None:
    """ConfigError where mixup / cutmix cannot run: an odd batch per process, or no whole batch."""
    if mixer and batch_size % 2:
        raise ConfigError(
            f"--mixup / --cutmix mix a batch with its reverse: use an even batch per process, not {batch_size}"
        )
    if mixer and not steps_per_epoch:
        raise ConfigError(
            "--mixup / --cutmix drop the last, short batch: the train split has no whole batch; lower --batch-size"
        )


def end_of_epoch(
    model: DynamicViT, val_loader: torch.utils.data.DataLoader, opts: TrainOptions, out: Path, state: dict
) -> dict:
    """Validate, and save the checkpoint when it is the one to keep; returns the metrics to record."""
    with autocast(opts, device=next(model.parameters()).device):
        logits, targets = loader_logits(model, val_loader)
    objective = val_objective(logits, targets)
    kept = opts.keep == "last" or state["best"] is None or tuple(objective) > tuple(state["best"])
    if kept:
        rd.save_checkpoint(out, model)
        state["best"], state["best_epoch"] = list(objective), state["epoch"]
    return {"val_acc": exit_accuracies(logits, targets), "val_objective": list(objective), "kept": kept}


def diverged(loss: float, epoch: int, state: dict, opts: TrainOptions, out: Path) -> str:
    kept = (
        f"the checkpoint of epoch {state['best_epoch']} is kept in {out} (--resume {out} continues from the last epoch)"
        if state["best_epoch"]
        else "no checkpoint was written"
    )
    return (
        f"the training loss became {loss} at epoch {epoch}, step {state['step']}: lower --lr (was {opts.lr:g}); {kept}"
    )


def save_resume(
    out: Path,
    model: DynamicViT,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    mask_gen: torch.Generator,
    state: dict,
) -> None:
    """Everything an interrupted run needs to continue exactly where this epoch ended."""
    opt_state = opt.state_dict()
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.trainable_state_dict().items()}
    for i, per_param in opt_state["state"].items():
        tensors |= {f"opt.{i}.{k}": torch.as_tensor(v).cpu() for k, v in per_param.items()}
    tensors |= {"rng.torch": torch.get_rng_state(), "rng.mask": mask_gen.get_state()}
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    meta = {**state, "param_groups": opt_state["param_groups"], "sched": sched_state, "scaler": scaler.state_dict()}
    rd.write_resume(out, tensors, meta)


def restore(
    resume: tuple[dict[str, torch.Tensor], dict],
    model: DynamicViT,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    mask_gen: torch.Generator,
    out: Path,
) -> dict:
    """Load what `save_resume` wrote; returns the loop's state (epoch, step, best so far)."""
    tensors, meta = resume
    device = next(model.parameters()).device
    model.load_trainable_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")})
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            per_param.setdefault(int(i), {})[name] = value if name == "step" else value.to(device)
    opt.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**meta["sched"], "lr_lambdas": [None] * len(opt.param_groups)})
    if meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    mask_gen.set_state(tensors["rng.mask"])
    rd.truncate_metrics(out, meta["epoch"])
    return {k: meta[k] for k in ("epoch", "step", "best", "best_epoch")}
