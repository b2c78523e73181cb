"""Adaptive-attack throughput: image-steps per second through M + K forward and backward.

    python bench/bench_adaptive.py                      # CPU, the default run's trained M and K
    python bench/bench_adaptive.py --device cuda --batch-sizes 32 64 128
    python bench/bench_adaptive.py --random-init        # same cost, no trained models needed

One step of an adaptive attack is one forward and backward pass of the image through M and
through K's differentiable view (backbone, RPN, RoIAlign, box head; ``part_view``). The benchmark
times, per batch size, in one run on one machine:

- ``m``: M alone (the gray-box attacks' step),
- ``k``: K's view alone (forward + hinge loss + backward to the image),
- ``joint``: one step of the joint attack (M + K, quantisation, projection),
- ``judge``: the hard pipeline (M forward + K's ``PartExtractor``), no gradients,

and prints image-steps per second, the ratios to ``m`` and the peak memory (CPU: the process's
peak resident size so far, so give batch sizes in increasing order).

``--breakdown`` prints where one attack step's time goes (default batch 32, one thread unless
``--threads``): the share of each module's forward and backward (M, K's trunk, FPN, RPN, RoIAlign
forward and backward, box head and predictor, the rest: losses, padding, copies), from the
profiler's operator times (a backward operator is charged to the module whose forward made it),
the step's FLOPs (``torch.utils.flop_counter.FlopCounterMode``) and the GFLOP/s achieved, beside
a 2048 x 2048 float32 matrix multiply timed in the same run (the CPU's practical peak):

    python bench/bench_adaptive.py --breakdown --k-model slim

``--compare-k lean,slim`` measures several Ks in one run: image-steps per second of a joint
attack step, of K's view alone and of the hard judge at ``--batch-sizes``' first size, K's
training seconds per batch (8 synthetic training images, SGD step included), and each figure's
ratio to the first K's:

    python bench/bench_adaptive.py --compare-k lean,slim --threads 2

``--convergence`` instead compares the step rules on the real attack, in one run:

    python bench/bench_adaptive.py --convergence --images 20 --steps 10 20 50 100

the re-classification attack (the one slowest to converge: targeted towards the best-matching
other class, one target, one run) at L-inf ``--epsilon`` on ``--images`` class-stratified test
images M gets right, with the detection threshold fixed at 10% FPR on clean validation images,
once per rule (``apgd``, ``cosine``) and step budget. Per rule and budget it prints the
re-classification accuracy on the hard pipeline (lower: stronger attack), the seconds, the
image-steps the attack ran (early stop per image) and image-steps per second; then, per rule,
the seconds to its first budget within 2 points of the lowest accuracy any rule reached (the
converged worst case). Models: the default
configuration's M and K from ``--output-dir``'s model cache (``python main.py`` fills it; trained
there first when missing, a few minutes), or random initialisation with ``--random-init``
(the proposals differ, so the K step's cost does a little).
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from unmask.attacks import LINF
from unmask.attacks.adaptive.engine import quantize_ste
from unmask.attacks.adaptive.part_view import PartView
from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.models.classifier import build_classifier
from unmask.models.part_extractor import PartExtractor, build_part_extractor

IMAGE_SIZE = 128  # the default run's


def default_plan(output_dir: str, k_model: str | None = None, data_dir: str | None = None):
    """The default configuration's plan writing to ``output_dir`` (K: ``k_model`` or the default;
    the synthetic world in ``data_dir`` or the configuration's folder)."""
    from unmask.config import resolve_config
    from unmask.experiment.plan import build_plan

    overrides: dict[str, object] = {"output_dir": output_dir, "device": "cpu"}
    if k_model:
        overrides["k_model"] = k_model
    if data_dir:
        overrides["data_dir"] = data_dir
    return build_plan(resolve_config({}, "demo", overrides))


def load_models(output_dir: str | None, *, device: torch.device, k_model: str | None = None,
                data_dir: str | None = None) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """The default configuration's M (compact) and K (``k_model`` or the default) from
    ``output_dir``'s cache (trained there when missing), or randomly initialised ones when
    ``output_dir`` is None."""
    if output_dir is None:
        from unmask.config import Config

        torch.manual_seed(0)
        classifier = build_classifier("compact", 5)
        part_model = build_part_extractor(k_model or Config().k_model, image_size=IMAGE_SIZE)
        return classifier.to(device).eval(), part_model.to(device).eval(), "M, K: random init"
    from unmask.experiment.stages import (
        load_classifier_data,
        prepare_data,
        trained_classifiers,
        trained_part_extractor,
    )
    from unmask.runtime import Runtime
    from unmask.train.loop import ModelCache

    plan = default_plan(output_dir, k_model, data_dir)
    runtime = Runtime.start("cpu", verbosity=1)
    cache = ModelCache(plan.models_dir, runtime, plan.allow_random_init)
    prepare_data(plan.data, runtime, k_splits=plan.k_splits)
    m, _ = trained_classifiers(plan.m, None, load_classifier_data(plan.data), cache)
    k = trained_part_extractor(plan.k, plan.data, cache)
    return (m.model.to(device).eval(), k.extractor.model.to(device).eval(),
            f"M: {m.description}; K: models/{k.directory.name}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_image(step, images: torch.Tensor, *, repeats: int, device: torch.device) -> float:
    """Seconds per image of ``step(images)`` (after one warm-up call), best of ``repeats``."""
    step(images)
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step(images)
        _sync(device)
        times.append(time.perf_counter() - started)
    return min(times) / len(images)


def convergence(args: argparse.Namespace, record: BenchmarkRecord) -> None:
    """The step rules' accuracy, seconds and image-steps per second per step budget (see the docstring)."""
    import numpy as np

    from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions, DefenseTarget, adaptive_attack
    from unmask.data.sampling import stratified_sample
    from unmask.evaluation import Scored, fix_thresholds
    from unmask.experiment.stages import (
        clean_predictions,
        hard_judge,
        load_classifier_data,
        prepare_data,
        trained_classifiers,
        trained_part_extractor,
    )
    from unmask.runtime import Runtime
    from unmask.train.loop import ModelCache

    plan = default_plan(args.output_dir, args.k_model, args.data_dir)
    runtime = Runtime.start("cpu", verbosity=1)
    cache = ModelCache(plan.models_dir, runtime, plan.allow_random_init)
    prepare_data(plan.data, runtime, k_splits=plan.k_splits)
    data = load_classifier_data(plan.data)
    m, _ = trained_classifiers(plan.m, None, data, cache, inference=plan.inference)
    k = trained_part_extractor(plan.k, plan.data, cache)
    validation_images, _ = data["val"].tensors()
    validation = Scored.of(clean_predictions(validation_images, m.inference, None, k.extractor), plan.class_set)
    threshold = fix_thresholds(validation, 0.10).set_jaccard
    images, labels = data["test"].tensors()
    clean_m = m.inference.predict(images).cpu().numpy()
    correct = np.flatnonzero(clean_m == labels.numpy())
    chosen = correct[stratified_sample(labels.numpy()[correct], args.images, seed=0)]
    x, y = images[chosen], labels[chosen]
    target = DefenseTarget(classifier=m.model, part_model=k.extractor.model,
                           class_parts=torch.from_numpy(np.asarray(plan.class_set.expected, dtype=np.float32)),
                           k_score_threshold=k.extractor.score_threshold, detection_threshold=threshold,
                           judge=hard_judge(m.inference, k.extractor, plan.class_set, threshold))
    vector = ADAPTIVE_ATTACKS.vector("reclassify_linf", args.epsilon)
    print(f"{torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()}); {vector.label} "
          f"(targeted, 1 target, 1 run) on {len(chosen)} test images; threshold {threshold:.3f} at 10% FPR")
    print(f"{'rule':>7} {'steps':>5} {'re-class. acc.':>15} {'seconds':>8} {'image-steps':>12} {'img-step/s':>11}")
    accuracy: dict[tuple[str, int], float] = {}
    seconds: dict[tuple[str, int], float] = {}
    for rule in ("apgd", "cosine"):
        for steps in args.steps:
            options = AdaptiveOptions(steps=steps, restarts=1, targets=1, reclassify_losses=("targeted",),
                                      step_schedule=rule)
            started = time.perf_counter()
            result = adaptive_attack(target, x, y, vector, options, indices=torch.from_numpy(chosen))
            seconds[rule, steps] = time.perf_counter() - started
            accuracy[rule, steps] = 100 * float((result.verdict.unmask_prediction == y).float().mean())
            image_steps = result.stats["image_steps"]
            print(f"{rule:>7} {steps:>5} {accuracy[rule, steps]:>14.1f}% {seconds[rule, steps]:>8.1f} "
                  f"{image_steps:>12.0f} {image_steps / seconds[rule, steps]:>11.1f}", flush=True)
    record.table("convergence", [{"rule": rule, "steps": steps, "reclassification_accuracy_%": accuracy[rule, steps],
                                  "seconds": seconds[rule, steps]} for rule, steps in accuracy],
                 description=f"{vector.label} on {len(chosen)} test images: re-classification accuracy and seconds "
                             "per step rule and budget")
    converged = min(accuracy.values())
    for rule in ("apgd", "cosine"):
        within = [steps for steps in args.steps if accuracy[rule, steps] <= converged + 2]
        reached = f"{seconds[rule, within[0]]:.1f} s ({within[0]} steps)" if within else "not within the budgets run"
        print(f"{rule}: converged worst case ({converged:.1f}% + 2 points) reached in {reached}")


def attack_steps(classifier: torch.nn.Module, part_model: torch.nn.Module, *, device: torch.device,
                 k_score_threshold: float, judge_batch: int) -> dict[str, Callable[[torch.Tensor], None]]:
    """One step of each kind on a batch: ``m`` (M's forward and backward), ``k`` (K's view and a
    hinge loss, forward and backward), ``joint`` (the joint attack's step: quantisation, M and
    K's view, the loss, the hard presence, the backward and the projection) and ``judge`` (the hard
    pipeline: M's prediction and K's ``PartExtractor``, no gradients)."""
    for model in (classifier, part_model):
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    view = PartView(part_model, score_threshold=k_score_threshold)
    extractor = PartExtractor(part_model, score_threshold=k_score_threshold, batch_size=judge_batch)
    epsilon = 16 / 255

    def expected(x: torch.Tensor) -> torch.Tensor:
        parts = torch.zeros(len(x), 44, device=device)
        parts[:, :10] = 1
        return parts

    def m_step(x: torch.Tensor) -> None:
        leaf = x.detach().requires_grad_(True)
        classifier(leaf).logsumexp(1).sum().backward()

    def k_step(x: torch.Tensor) -> None:
        leaf = x.detach().requires_grad_(True)
        outputs = view(leaf)
        (view.hinge_loss(outputs, add=expected(x), remove=1 - expected(x)).sum() + 0 * leaf.sum()).backward()

    def joint_step(x: torch.Tensor) -> None:
        leaf = x.detach().requires_grad_(True)
        x_q = quantize_ste(leaf, x, epsilon, LINF)
        outputs = view(x_q)
        loss = classifier(x_q).logsumexp(1) + view.hinge_loss(outputs, add=expected(x), remove=1 - expected(x))
        view.hard_presence(outputs)
        loss.sum().backward()  # not autograd.grad: FlopCounterMode's backward tracking needs backward()
        LINF.project(leaf.detach() - 2 / 255 * LINF.direction(leaf.grad), x, epsilon)

    def judge_step(x: torch.Tensor) -> None:
        with torch.no_grad():
            classifier(x).argmax(1)
        extractor.extract(x, batch_size=len(x))

    return {"m": m_step, "k": k_step, "joint": joint_step, "judge": judge_step}


def bench_images(output_dir: str | None, count: int, *, device: torch.device, data_dir: str | None = None
                 ) -> tuple[torch.Tensor, str]:
    """``count`` test images of the default run's synthetic world (8-bit) when its models are
    used, so that K's proposals are those of real use; uniform noise for random models."""
    if output_dir is None:
        generator = torch.Generator().manual_seed(0)
        return (torch.rand(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 255).round().div(255).to(device), \
            "uniform noise"
    from unmask.experiment.stages import load_classifier_data

    images, _ = load_classifier_data(default_plan(output_dir, data_dir=data_dir).data)["test"].tensors()
    repeats = -(-count // len(images))
    return images.repeat(repeats, 1, 1, 1)[:count].to(device), "synthetic test images"


def machine_line(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    capability = "" if device.type == "cuda" else f", {torch.backends.cpu.get_cpu_capability()}"
    return (f"device: {device} ({name}{capability}); torch {torch.__version__}, {torch.get_num_threads()} CPU "
            f"threads; image size {IMAGE_SIZE}")


def matmul_gflops(repeats: int = 5, size: int = 2048) -> float:
    """GFLOP/s of a size x size float32 matrix multiply, best of ``repeats``: the CPU's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / time_per_image(lambda _: a @ b, torch.empty(1), repeats=repeats,
                                        device=torch.device("cpu")) / 1e9


def step_flops(step: Callable[[torch.Tensor], None], images: torch.Tensor) -> float:
    """FLOPs per image of ``step(images)``, counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        step(images)
    return counter.get_total_flops() / len(images)


def breakdown(args: argparse.Namespace, record: BenchmarkRecord) -> None:
    """Where one joint attack step's time goes, by module, and its FLOPs against the CPU's peak."""
    device = torch.device(args.device)
    output_dir = None if args.random_init else args.output_dir
    classifier, part_model, sources = load_models(output_dir, device=device, k_model=args.k_model, data_dir=args.data_dir)
    batch = args.batch_sizes[0]
    images, kind = bench_images(output_dir, batch, device=device, data_dir=args.data_dir)
    steps = attack_steps(classifier, part_model, device=device, k_score_threshold=args.k_score_threshold,
                         judge_batch=batch)
    print(f"{machine_line(device)}; {sources}; batch {batch} of {kind}")
    modules = {"M": classifier, "K trunk": part_model.backbone.body, "K FPN": part_model.backbone.fpn,
               "K RPN": part_model.rpn, "K box head": part_model.roi_heads.box_head,
               "K box predictor": part_model.roi_heads.box_predictor}
    shares = module_times(steps["joint"], images, modules, repeats=args.repeats)
    total = sum(shares.values())
    rows = [{"module": label, "ms": 1000 * seconds, "share %": 100 * seconds / total}
            for label, seconds in sorted(shares.items(), key=lambda item: -item[1])]
    print(f"{'module':<26} {'ms':>8} {'share':>7}")
    for row in rows:
        print(f"{row['module']:<26} {row['ms']:>8.1f} {row['share %']:>6.1f}%")
    record.table("breakdown", rows, description=f"one joint attack step at batch {batch} ({kind}; {sources}): "
                                                "profiled time per module, forward and backward")
    flops = step_flops(steps["joint"], images)
    seconds = time_per_image(steps["joint"], images, repeats=args.repeats, device=device)
    achieved = flops / seconds / 1e9
    print(f"joint step: {flops / 1e9:.3f} GFLOP per image, {1 / seconds:.1f} image-steps/s, {achieved:.1f} GFLOP/s")
    record.value("gflop_per_image_step", flops / 1e9)
    record.value("image_steps_per_s", 1 / seconds)
    record.value("gflop_per_s", achieved)
    if device.type == "cpu":
        peak = matmul_gflops()
        print(f"2048 x 2048 float32 matrix multiply: {peak:.1f} GFLOP/s; the step reaches {100 * achieved / peak:.0f}% "
              "of it")
        record.value("matmul_gflop_per_s", peak)
        record.value("share_of_peak_%", 100 * achieved / peak)


def module_times(step: Callable[[torch.Tensor], None], images: torch.Tensor, modules: dict[str, torch.nn.Module],
                 *, repeats: int) -> dict[str, float]:
    """Seconds of ``step(images)`` per module, forward and backward, from the profiler's top-level
    operators (best of ``repeats`` profiled calls, by total): forward operators inside a module's
    forward are charged to it, a backward operator to the module whose forward operator has its
    autograd sequence number; RoIAlign (a function, not a module) is found by its operator name;
    everything else is "other" (losses, padding, copies, the RPN's and the judge's work outside
    the listed modules)."""
    stack: list[Any] = []
    handles = []
    for label, module in modules.items():
        def enter(_module: Any, _inputs: Any, label: str = label) -> None:
            scope = torch.autograd.profiler.record_function(f"bench::{label}")
            scope.__enter__()
            stack.append(scope)

        def leave(_module: Any, _inputs: Any, _outputs: Any) -> None:
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        step(images)
        best: dict[str, float] | None = None
        for _ in range(repeats):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                step(images)
            times = _charged(profile.events())
            if best is None or sum(times.values()) < sum(best.values()):
                best = times
    finally:
        for handle in handles:
            handle.remove()
    return best or {}


def _charged(events: Any) -> dict[str, float]:
    def scope(event: Any) -> str | None:
        while event is not None:
            if event.name.startswith("bench::"):
                return event.name.removeprefix("bench::")
            event = event.cpu_parent
        return None

    forward_scope = {event.sequence_nr: scope(event) for event in events
                     if event.sequence_nr >= 0 and not event.name.startswith("autograd::") and scope(event)}
    times: dict[str, float] = {}
    for event in events:
        if event.cpu_parent is not None:
            continue
        if event.name.startswith("bench::"):
            label = f"{event.name.removeprefix('bench::')} forward"
        elif event.name.startswith("autograd::engine::evaluate_function"):
            owner = "RoIAlign" if "roi_align" in event.name else forward_scope.get(event.sequence_nr) or "other"
            label = f"{owner} backward"
        else:
            label = "RoIAlign forward" if "roi_align" in event.name else "other forward"
        times[label] = times.get(label, 0.0) + event.cpu_time_total / 1e6
    return times


def training_seconds_per_batch(part_model: torch.nn.Module, output_dir: str, *, batches: int,
                               device: torch.device, data_dir: str | None = None) -> float:
    """Seconds per training batch of a copy of ``part_model`` (8 images of the default run's K
    training split, torchvision's Mask R-CNN losses, backward and an SGD step), the mean over
    ``batches`` after one warm-up batch."""
    from torch.utils.data import DataLoader

    from unmask.data.coco import PartSegmentationDataset, collate_detection, split_paths

    plan = default_plan(output_dir, data_dir=data_dir)
    dataset = PartSegmentationDataset(*split_paths(plan.data.root, "train"))
    loader = DataLoader(dataset, batch_size=8, shuffle=False, collate_fn=collate_detection)
    model = copy.deepcopy(part_model).to(device).train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    seconds = []
    for number, (images, targets) in zip(range(batches + 1), loader, strict=False):
        images = [image.to(device) for image in images]
        targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
        started = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if number:
            seconds.append(time.perf_counter() - started)
    return sum(seconds) / len(seconds)


def compare_k(args: argparse.Namespace, record: BenchmarkRecord) -> None:
    """Image-steps per second (joint step, K's view, hard judge) and training seconds per batch for
    each K of ``--compare-k``, in one run, with ratios to the first."""
    device = torch.device(args.device)
    output_dir = None if args.random_init else args.output_dir
    names = [name.strip() for name in args.compare_k.split(",") if name.strip()]
    batch = args.batch_sizes[0]
    print(f"{machine_line(device)}; batch {batch}")
    rows: dict[str, dict[str, float]] = {}
    for name in names:
        classifier, part_model, sources = load_models(output_dir, device=device, k_model=name, data_dir=args.data_dir)
        images, kind = bench_images(output_dir, batch, device=device, data_dir=args.data_dir)
        steps = attack_steps(classifier, part_model, device=device, k_score_threshold=args.k_score_threshold,
                             judge_batch=batch)
        row = {label: 1 / time_per_image(steps[label], images, repeats=args.repeats, device=device)
               for label in ("joint", "k", "judge")}
        row["gflop"] = step_flops(steps["joint"], images) / 1e9
        if output_dir is not None:
            row["train"] = training_seconds_per_batch(part_model, output_dir, batches=args.train_batches,
                                                      device=device, data_dir=args.data_dir)
        rows[name] = row
        print(f"{name}: {sources}; {kind}", flush=True)
    first = rows[names[0]]
    header = f"{'K':<14} {'GFLOP/step':>10} {'joint img-step/s':>17} {'K view img-step/s':>18} {'judge img/s':>12}"
    print(header + (f" {'train s/batch':>14}" if output_dir is not None else ""))
    for name, row in rows.items():
        line = (f"{name:<14} {row['gflop']:>10.3f} {row['joint']:>17.1f} {row['k']:>18.1f} {row['judge']:>12.1f}")
        print(line + (f" {row['train']:>14.3f}" if "train" in row else ""))
    record.table("compare_k", [{"k": name, "gflop_per_step": row["gflop"], "joint_image_steps_per_s": row["joint"],
                                "k_view_image_steps_per_s": row["k"], "judge_images_per_s": row["judge"],
                                "train_s_per_batch": row.get("train")} for name, row in rows.items()],
                 description=f"per K at batch {batch}: FLOPs of a joint step per image, image-steps per second "
                             "(joint step, K's view), judged images per second, training seconds per batch of 8")
    for name, row in list(rows.items())[1:]:
        ratios = (f"{name} / {names[0]}: FLOPs {row['gflop'] / first['gflop']:.2f}x, joint step "
                  f"{row['joint'] / first['joint']:.2f}x, K view {row['k'] / first['k']:.2f}x, judge "
                  f"{row['judge'] / first['judge']:.2f}x as many per second")
        if "train" in row:
            ratios += f", training {first['train'] / row['train']:.2f}x as fast per batch"
        print(ratios)
        record.value(f"{name}_over_{names[0]}", {
            "flops": row["gflop"] / first["gflop"], "joint": row["joint"] / first["joint"], "k_view": row["k"] / first["k"],
            "judge": row["judge"] / first["judge"],
            "training_speed": first["train"] / row["train"] if "train" in row else None})


def throughput_table(args: argparse.Namespace, record: BenchmarkRecord) -> None:
    """Image-steps per second per batch size, and each step's cost against M's."""
    device = torch.device(args.device)
    output_dir = None if args.random_init else args.output_dir
    classifier, part_model, sources = load_models(output_dir, device=device, k_model=args.k_model, data_dir=args.data_dir)
    steps = attack_steps(classifier, part_model, device=device, k_score_threshold=args.k_score_threshold,
                         judge_batch=max(args.batch_sizes))
    print(f"{machine_line(device)}; {sources}")
    generator = torch.Generator().manual_seed(0)
    print(f"{'batch':>5} {'m img-step/s':>13} {'k img-step/s':>13} {'joint img-step/s':>17} {'judge img/s':>12} "
          f"{'k/m cost':>9} {'joint/m cost':>13} {'peak memory':>12}")
    rows = []
    for batch_size in args.batch_sizes:
        images = (torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 255).round() / 255
        images = images.to(device)
        timings = {label: time_per_image(steps[label], images, repeats=args.repeats, device=device)
                   for label in ("m", "k", "joint", "judge")}
        rows.append({"batch": batch_size, **{f"{label}_per_s": 1 / seconds for label, seconds in timings.items()}})
        if device.type == "cuda":
            memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
            torch.cuda.reset_peak_memory_stats(device)
        else:  # the process's peak resident size so far (batch sizes run in the order given)
            memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
        print(f"{batch_size:>5} {1 / timings['m']:>13.1f} {1 / timings['k']:>13.1f} {1 / timings['joint']:>17.1f} "
              f"{1 / timings['judge']:>12.1f} {timings['k'] / timings['m']:>9.1f} {timings['joint'] / timings['m']:>13.1f} "
              f"{memory:>12}", flush=True)
    record.table("throughput", rows, description=f"image-steps per second per batch size ({sources}; uniform noise)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="batch sizes of the table; --breakdown and --compare-k use the first (give 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output-dir", default="results", help="the run's results folder (its models/ cache)")
    parser.add_argument("--data-dir", default=None, help="the synthetic world's folder (default: the configuration's)")
    parser.add_argument("--random-init", action="store_true", help="random M and K instead of trained ones")
    parser.add_argument("--k-model", default=None, help="K's architecture (default: the default configuration's)")
    parser.add_argument("--k-score-threshold", type=float, default=0.5)
    parser.add_argument("--breakdown", action="store_true", help="time and FLOPs of one joint step by module")
    parser.add_argument("--compare-k", default="", help="comma-separated Ks to compare in one run, e.g. lean,slim")
    parser.add_argument("--train-batches", type=int, default=5, help="--compare-k: training batches timed per K")
    parser.add_argument("--convergence", action="store_true", help="compare the step rules on the real attack")
    parser.add_argument("--images", type=int, default=20, help="--convergence: test images")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100], help="--convergence: budgets")
    parser.add_argument("--epsilon", type=float, default=8.0, help="--convergence: L-inf epsilon, 0-255 scale")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = BenchmarkRecord("bench_adaptive", args)
    if args.convergence:
        convergence(args, record)
    elif args.breakdown:
        breakdown(args, record)
    elif args.compare_k:
        compare_k(args, record)
    else:
        throughput_table(args, record)
    record.write(args.json, device=args.device)


if __name__ == "__main__":
    main()
