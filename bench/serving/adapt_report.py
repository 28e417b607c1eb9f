"""The report of ``dynadapter bench adapt`` (``serving.adapt``): per-step and bucketed statistics of its runs,
issue #17's verdicts on them, the ``adapt`` section of docs/results.json and its part of the page."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.bench.lab.load import Sample
from dynadapter.bench.lab.machine import machine
from dynadapter.bench.lab.results import fmt
from dynadapter.bench.serving.adapt_setup import DRIFT, AdaptBenchConfig, AdaptInputs, References, Run
from dynadapter.bench.serving.rows import (
    AdaptSection,
    AdaptStep,
    Drift,
    DriftVerdict,
    Ramp,
    RampStep,
    RampVerdict,
    StepStats,
)

#: the section of docs/results.json this experiment writes and renders
RESULT_KEYS = ("adapt",)
FIGURES = {"ramp": Path("results") / "adapt_ramp.png", "drift": Path("results") / "adapt_drift.png"}


def stats(
    samples: Sequence[Sample], last: Sequence[int | None] | None = None, floor: Sequence[bool] | None = None
) -> StepStats:
    """p95 latency (ms), accuracy, agreement with ``last`` (the last exit's class id per image), the floor
    mode's accuracy on the same images (``floor``: right or not per image), mean threshold (a per-exit
    vector counts as the mean of its entries), exit reasons."""
    ok = [s for s in samples if s.ok]
    answers = [s.answer or {} for s in ok]
    thresholds = [float(np.mean(a["threshold"])) for a in answers if a.get("threshold") is not None]
    yardsticks: dict[str, float | None] = {}
    if last is not None:
        yardsticks["agreement"] = _mean([a.get("class_id") == last[s.image] for s, a in zip(ok, answers, strict=True)])
    if floor is not None:
        yardsticks["floor_accuracy"] = _mean([floor[s.image] for s in ok])
    return StepStats(
        requests=len(samples),
        errors=len(samples) - len(ok),
        p95_ms=float(np.percentile([s.seconds * 1000 for s in ok], 95)) if ok else None,
        accuracy=_mean([s.correct for s in ok]),
        threshold=_mean(thresholds),
        exit_reasons=dict(Counter(str(a.get("exit_reason")) for a in answers)),
        **yardsticks,
    )


def _mean(values: Sequence[float | bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize_run(run: Run, **yardsticks: Any) -> dict[str, Any]:
    """A run's ``stats`` with its client count, length and throughput (answered requests per second)."""
    row = stats(run.samples, **yardsticks)
    return {
        "clients": run.clients,
        "seconds": run.seconds,
        "throughput_rps": row.answered / run.seconds,
        **row.model_dump(exclude_unset=True),
    }


def buckets(run: Run, offset: float, bucket_s: float, **yardsticks: Any) -> list[dict[str, Any]]:
    """``stats`` and throughput per ``bucket_s`` of ``run``, by completion time; the last bucket takes the rest
    (under 1.5 ``bucket_s``: a run overshoots its length by the requests in flight at its end); ``t``: the
    bucket's middle in seconds, counted from ``offset``."""
    count = max(1, round(run.seconds / bucket_s))
    inside: list[list[Sample]] = [[] for _ in range(count)]
    for sample in run.samples:
        inside[min(int((sample.at + sample.seconds - run.start) // bucket_s), count - 1)].append(sample)
    rows = []
    for index, samples in enumerate(inside):
        low = index * bucket_s
        high = run.seconds if index == count - 1 else low + bucket_s
        row = stats(samples, **yardsticks)
        rows.append(
            {
                "t": offset + (low + high) / 2,
                "clients": run.clients,
                **row.model_dump(exclude_unset=True),
                "throughput_rps": row.answered / (high - low),
            }
        )
    return rows


def timeline(runs: Sequence[Run], bucket_s: float, yardsticks: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Runs laid end to end: the bucketed series, the scrapes (``t`` in seconds from the first run's start),
    each run's start on that axis and its length in seconds."""
    series, scraped, starts, offset = [], [], [], 0.0
    for run, yardstick in zip(runs, yardsticks, strict=True):
        starts.append(offset)
        series += buckets(run, offset, bucket_s, **yardstick)
        scraped += [{"t": offset + at - run.start, **values} for at, values in run.scrapes if at >= run.start]
        offset += run.seconds
    return {"series": series, "scrapes": scraped, "starts": starts, "seconds": [run.seconds for run in runs]}


# -- targets -----------------------------------------------------------------------------------------------------


def ramp_verdict(steps: dict[str, list[dict[str, Any]]], target_ms: float) -> dict[str, Any]:
    """Issue #17's ramp target on per-step rows (``clients``, ``p95_ms``, ``errors``, ``accuracy``,
    ``floor_accuracy``: ``RampStep``) of ``balanced`` and ``controller``, in ramp order: the controller keeps
    p95 <= ``target_ms``, answers every request and keeps accuracy >= the floor at every step up to twice the
    client count at which fixed balanced first exceeds the target (or fails requests). Returns the
    ``RampVerdict``'s fields (those it could judge)."""
    exceeded = _first_over([RampStep.model_validate(s) for s in steps["balanced"]], target_ms)
    controller = [RampStep.model_validate(s) for s in steps["controller"]]
    holds = 0
    for step in controller:
        if step.over(target_ms):
            break
        holds = step.clients
    if exceeded is None:
        never = "fixed balanced stayed within the target at every step measured"
        return _verdict(balanced_exceeds_at=exceeded, controller_holds_up_to=holds, met=False, why=never)
    required = 2 * exceeded
    judged = [s for s in controller if s.clients <= required]
    worst = max(judged, key=lambda s: float("inf") if s.p95_ms is None else s.p95_ms).p95_ms
    margins = [s.margin() for s in judged]
    failed = sum(s.errors for s in judged)
    judged_numbers: dict[str, Any] = {
        "balanced_exceeds_at": exceeded,
        "controller_holds_up_to": holds,
        "required_clients": required,
        "worst_p95_ms": worst,
        "worst_p95_over_target": worst / target_ms if worst is not None else None,
        "failed_requests": failed,
        "lowest_accuracy_margin": min(margins),
    }
    if max(s.clients for s in controller) < required:
        return _verdict(**judged_numbers, met=False, why=f"the ramp stops below {required} clients")
    latency = holds >= required
    accuracy = all(margin >= 0 for margin in margins)
    why = [] if latency else [f"controller misses the target from {_first_over(judged, target_ms)} clients"]
    why += [f"{failed} requests failed"] if failed else []
    why += [] if accuracy else ["controller accuracy below the floor"]
    return _verdict(**judged_numbers, met=latency and accuracy, why="; ".join(why) or None)


def _verdict(**fields: Any) -> dict[str, Any]:
    """The ramp verdict as results.json writes it: the fields given, in ``RampVerdict``'s order."""
    return RampVerdict(**fields).model_dump(exclude_unset=True)


def _first_over(steps: list[RampStep], target_ms: float) -> int | None:
    return next((s.clients for s in steps if s.over(target_ms)), None)


def drift_verdict(agreement: dict[str, float | None], epsilon: float) -> dict[str, Any]:
    """Issue #17's drift target on the judged window's agreement with the last exit (``live`` and ``fixed``):
    >= 1 - ``epsilon`` with live calibration, < 1 - ``epsilon`` without (``DriftVerdict``'s fields)."""
    bound = round(1 - epsilon, 9)
    live, fixed = agreement["live"], agreement["fixed"]
    live_ok = live is not None and round(live, 9) >= bound
    fixed_below = fixed is not None and round(fixed, 9) < bound
    verdict = DriftVerdict(
        bound=bound, live=live, fixed=fixed, live_ok=live_ok, fixed_below=fixed_below, met=live_ok and fixed_below
    )
    return verdict.model_dump()


def shadowed_before(run: Run, fraction: float) -> float | None:
    """Shadowed images (``dynadapter_shadow_images_total``, every exit) from ``run``'s start until its last
    ``fraction`` began: what the live window took in before the judging."""
    since = run.start + (1 - fraction) * run.seconds
    totals = [
        (at, sum(v or 0.0 for k, v in values.items() if k.startswith("dynadapter_shadow_images_total")))
        for at, values in run.scrapes
    ]
    before = [total for at, total in totals if at <= run.start]
    until = [total for at, total in totals if at <= since]
    return until[-1] - before[-1] if before and until else None


def judged_samples(run: Run, fraction: float) -> list[Sample]:
    """The samples sent in the last ``fraction`` of ``run``."""
    since = run.start + (1 - fraction) * run.seconds
    return [s for s in run.samples if s.at >= since]


# -- report ------------------------------------------------------------------------------------------------------


def report(
    inputs: AdaptInputs,
    refs: References,
    probe: Run,
    target_ms: float,
    ramp_runs: dict[str, list[Run]],
    drift_runs: dict[str, list[Run]],
    config: AdaptBenchConfig,
    load_before: float,
) -> dict[str, Any]:
    from dynadapter.training.corruptions import SEVERITIES

    yardsticks: dict[str, Any] = {"last": refs.last_clean}
    yardsticks |= {"floor": refs.floor_correct} if refs.floor is None else {}
    ramp_steps = {
        name: [_with_floor(summarize_run(r, **yardsticks), refs.floor) for r in runs]
        for name, runs in ramp_runs.items()
    }
    clean, drifted = {"last": refs.last_clean}, {"last": refs.last_drifted}
    window = {name: judged_samples(runs[1], config.judge_fraction) for name, runs in drift_runs.items()}
    judged = {name: stats(samples, last=refs.last_drifted) for name, samples in window.items()}
    by_kind = {
        name: {
            kind: stats([s for s in samples if inputs.kinds[s.image] == kind], last=refs.last_drifted).agreement
            for kind in config.corruptions
        }
        for name, samples in window.items()
    }
    manifest = inputs.manifest
    return {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(config.providers, load_before),
        "model": {
            "model_repo": str(inputs.model_repo),
            "name": manifest.name,
            "exits": len(manifest.segments),
            "gflops_full": manifest.gflops_full,
            "modes": {mode: choice.model_dump(exclude_none=True) for mode, choice in manifest.modes.items()},
        },
        "images": {
            "data": inputs.data,
            "split_seed": inputs.seed,
            "count": len(inputs.clean.bodies),
            "photo_size": list(config.photo_size),
            "format": "phone JPEG (quality 90, EXIF orientation 6), multipart",
            "corruptions": {kind: SEVERITIES[kind][config.severity - 1] for kind in config.corruptions},
            "severity": config.severity,
            "last_exit_accuracy": {
                "clean": _accuracy(refs.last_clean, inputs.clean.targets),
                "drifted": _accuracy(refs.last_drifted, inputs.drifted.targets),
            },
        },
        "settings": config.model_dump(mode="json", exclude={"docs", "model_repo", "run_dir"}),
        "ramp": {
            "target_p95_ms": target_ms,
            "target_source": "given"
            if config.target_p95_ms
            else f"{config.target_factor:g} x fixed balanced p95 at 1 client",
            "probe": summarize_run(probe),
            "accuracy_floor": config.accuracy_floor,
            "steps": ramp_steps,
            "timelines": {
                name: timeline(runs, config.bucket_s, [yardsticks] * len(runs)) for name, runs in ramp_runs.items()
            },
            "verdict": ramp_verdict(ramp_steps, target_ms),
        },
        "drift": {
            "epsilon": config.epsilon,
            "phases_s": [config.clean_s, config.drift_s],
            "judge_fraction": config.judge_fraction,
            "phases": {
                name: [summarize_run(runs[0], **clean), summarize_run(runs[1], **drifted)]
                for name, runs in drift_runs.items()
            },
            "timelines": {name: timeline(runs, config.bucket_s, [clean, drifted]) for name, runs in drift_runs.items()},
            "judged": {name: row.model_dump(exclude_unset=True) for name, row in judged.items()},
            "judged_agreement_by_corruption": by_kind,
            "shadowed_before_judged": shadowed_before(drift_runs["live"][1], config.judge_fraction),
            "verdict": drift_verdict({name: row.agreement for name, row in judged.items()}, config.epsilon),
        },
        "figures": {name: str(path) for name, path in FIGURES.items()},
    }


def _with_floor(row: dict[str, Any], floor: float | None) -> dict[str, Any]:
    return row if floor is None else row | {"floor_accuracy": floor}


def _accuracy(answers: Sequence[int | None], targets: Sequence[int]) -> float | None:
    return _mean([a == t for a, t in zip(answers, targets, strict=True) if a is not None])


RAMP_HEADER = [
    "configuration",
    "clients",
    "p95 ms",
    "req/s",
    "accuracy",
    "floor accuracy",
    "agreement with last exit",
    "mean threshold",
    "deadline exits",
    "answered",
]
DRIFT_HEADER = ["server", "phase", "agreement with last exit", "accuracy", "mean threshold", "req/s", "answered"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _answered(row: AdaptStep) -> str:
    return f"{row.answered}/{row.requests}"


def _ramp_lines(ramp: Ramp) -> list[str]:
    rows = [
        [
            name,
            str(s.clients),
            fmt(s.p95_ms),
            fmt(s.throughput_rps),
            fmt(s.accuracy, 3),
            fmt(s.floor_accuracy, 3),
            fmt(s.agreement, 3),
            fmt(s.threshold, 3),
            str(s.exit_reasons.get("deadline", 0)),
            _answered(s),
        ]
        for name, steps in ramp.steps.items()
        for s in steps
    ]
    return _table(RAMP_HEADER, rows)


def _ramp_target(ramp: Ramp) -> str:
    v, target = ramp.verdict, ramp.target_p95_ms
    verdict = "met" if v.met else "MISSED"
    head = f"{verdict}: controller p95 <= {target:.1f} ms up to 2x the load where fixed balanced exceeds it"
    if v.balanced_exceeds_at is None:
        return f"{head}: {v.why} (the controller held up to {v.controller_holds_up_to} clients)"
    text = (
        f"{head}, with accuracy >= the floor ({ramp.accuracy_floor}): balanced exceeds it at "
        f"{v.balanced_exceeds_at} clients, so the controller must hold to {v.required_clients}; it holds up to "
        f"{v.controller_holds_up_to}; its worst p95 up to {v.required_clients} clients is "
        f"{fmt(v.worst_p95_ms)} ms ({fmt(v.worst_p95_over_target, 2)}x the target), its lowest accuracy "
        f"margin over the floor {fmt(v.lowest_accuracy_margin, 3)}"
    )
    return text + (f" ({v.why})" if v.why else "")


def _saturation_text(ramp: Ramp) -> str:
    """Why a closed loop needs throughput: past saturation p95 ~ clients / throughput."""
    since = ramp.verdict.balanced_exceeds_at
    if since is None:
        return ""
    mean = {
        name: np.mean([s.throughput_rps for s in ramp.steps[name] if s.clients is not None and s.clients >= since])
        for name in ("controller", "balanced", "threshold-1")
    }
    return (
        f"From {since} clients on, where fixed balanced exceeds the target, the configurations served "
        + ", ".join(f"{name} {value:.1f}" for name, value in mean.items())
        + f" requests/s on average (controller / balanced: {mean['controller'] / mean['balanced']:.2f}x). With "
        "clients sending back to back, p95 grows about in proportion to clients / throughput once the server is "
        "saturated: holding the target at twice the clients takes about twice the throughput of the point that "
        "just exceeded it, which cheaper exits give only as far as the work per image (decode, HTTP, batching) "
        "is in the segments they skip."
    )


def _floor_text(ramp: Ramp) -> str:
    """Why accuracy can fall under a mode floor: the controller's points are chosen by validation accuracy."""
    margin = ramp.verdict.lowest_accuracy_margin
    if margin is None or margin >= 0:
        return ""
    return (
        f"The controller's accuracy fell {-margin:.3f} under the floor's on the same photos: it picks its points "
        "by their validation accuracy (at or above the floor's), and on these photos the cheapest of them "
        "answer less accurately than the floor mode itself."
    )


def _drift_cost_text(drift: Drift) -> str:
    """What the live server paid for its agreement in the drifted phase: threshold and throughput."""
    live, fixed = (drift.phases[name][1] for name in ("live", "fixed"))
    ratio = (live.throughput_rps or 0.0) / (fixed.throughput_rps or float("nan"))
    return (
        f"In the drifted phase the live server answered at a mean threshold of {fmt(live.threshold, 3)} "
        f"(fixed: {fmt(fixed.threshold, 3)}) and served {fmt(live.throughput_rps)} requests/s against "
        f"{fmt(fixed.throughput_rps)} without live calibration ({ratio:.2f}x): "
        "agreement is bought by sending more images to later exits, and by the shadow work."
    )


def _drift_lines(drift: Drift) -> list[str]:
    rows = [
        [
            f"{name} ({DRIFT[name]})",
            phase,
            fmt(s.agreement, 3),
            fmt(s.accuracy, 3),
            fmt(s.threshold, 3),
            fmt(s.throughput_rps),
            _answered(s),
        ]
        for name, phases in drift.phases.items()
        for phase, s in zip(("clean", "drifted"), phases, strict=True)
    ]
    return _table(DRIFT_HEADER, rows)


def _drift_target(drift: Drift) -> str:
    v = drift.verdict
    return (
        f"{'met' if v.met else 'MISSED'}: agreement with the last exit over the last {drift.judge_fraction:.0%} "
        f"of the drifted phase >= {v.bound:.3f} with live calibration ({fmt(v.live, 3)}: "
        f"{'met' if v.live_ok else 'missed'}) and below it without ({fmt(v.fixed, 3)}: "
        f"{'yes' if v.fixed_below else 'no'})"
    )


def render_markdown(results: dict[str, Any]) -> str:
    if not results.get("adapt"):
        return ""
    section = AdaptSection.model_validate(results["adapt"])
    m, images, model, ramp, drift = section.machine, section.images, section.model, section.ramp, section.drift
    s, load, last = section.settings, m.load_average_1m, images.last_exit_accuracy
    corruptions = ", ".join(f"{kind} {value:g}" for kind, value in images.corruptions.items())
    width, height = images.photo_size
    return "\n".join(
        [
            "## Runtime adaptation",
            "",
            f"`dynadapter bench adapt`, {section.created_utc}: model `{model.name}` ({model.exits} exits, "
            f"{model.gflops_full:.3f} GFLOPs at full depth); {images.count} test images of `{images.data}` "
            f"photographed as {width}x{height} phone JPEGs; {m.cpu_count} CPU cores ({m.processor}), "
            f"providers `{m.providers}`, 1-minute load average {load.start:.1f} at the start and "
            f"{load.end:.1f} at the end (other work shared the machine). Every server: at most "
            f"{s.max_batch_size} images a batch, {s.max_wait_ms:g} ms of waiting for one, {s.threads} "
            "intra-op thread(s). Clients send back to back (closed loop): past saturation, p95 grows with the "
            "client count unless the work per image shrinks.",
            "",
            f"### Load ramp\n\nClient counts {s.clients}, {s.step_s:g} s each per configuration, interleaved. "
            f"Target p95 {ramp.target_p95_ms:.1f} ms ({ramp.target_source}; fixed balanced at 1 client: "
            f"p95 {fmt(ramp.probe.p95_ms)} ms). Accuracy floor `{ramp.accuracy_floor}`: "
            "`floor accuracy` is the floor's accuracy on exactly the photos that step sent.",
            "",
            *_ramp_lines(ramp),
            "",
            _saturation_text(ramp),
            "",
            _floor_text(ramp),
            "",
            f"![ramp]({section.figures.ramp})",
            "",
            f"### Input drift\n\n{s.drift_clients} clients; {drift.phases_s[0]:g} s of clean photos, then "
            f"{drift.phases_s[1]:g} s of the same digits corrupted at severity {images.severity} ({corruptions}; "
            f"training/corruptions.py). Live calibration shadows {s.live_calibration:g} of the images, re-chooses "
            f"every {s.calibration_every} shadows over a window of {s.calibration_window}, epsilon "
            f"{drift.epsilon:g}; before the judged part began it had shadowed at least "
            f"{fmt(drift.shadowed_before_judged, 0)} drifted images. "
            "Last-exit accuracy on these photos: "
            f"{fmt(last.clean, 3)} clean, {fmt(last.drifted, 3)} corrupted.",
            "",
            *_drift_lines(drift),
            "",
            "Agreement with the last exit over the judged part of the drifted phase, by corruption: "
            + "; ".join(
                f"{name}: " + ", ".join(f"{kind} {fmt(value, 3)}" for kind, value in kinds.items())
                for name, kinds in drift.judged_agreement_by_corruption.items()
            )
            + ".",
            "",
            _drift_cost_text(drift),
            "",
            f"![drift]({section.figures.drift})",
            "",
            "Targets:",
            "",
            f"- {_ramp_target(ramp)}",
            f"- {_drift_target(drift)}",
        ]
    )
