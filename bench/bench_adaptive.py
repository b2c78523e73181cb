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
import platform
import resource
import time

import torch

from unmask.attacks import LINF
from unmask.attacks.adaptive.engine import quantize_ste
from unmask.attacks.adaptive.part_view import PartView
from unmask.models.classifier import build_classifier
from unmask.models.part_extractor import PartExtractor, build_part_extractor

IMAGE_SIZE = 128  # the default run's


def load_models(output_dir: str | None, *, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """The default configuration's M (compact) and K (lean) from ``output_dir``'s cache (trained
    there when missing), or randomly initialised ones when ``output_dir`` is None."""
    if output_dir is None:
        torch.manual_seed(0)
        classifier, part_model = build_classifier("compact", 5), build_part_extractor("lean", image_size=IMAGE_SIZE)
        return classifier.to(device).eval(), part_model.to(device).eval(), "M, K: random init"
    from unmask.config import resolve_config
    from unmask.experiment.plan import build_plan
    from unmask.experiment.stages import (
        load_classifier_data,
        prepare_data,
        trained_classifiers,
        trained_part_extractor,
    )
    from unmask.runtime import Runtime
    from unmask.train.loop import ModelCache

    plan = build_plan(resolve_config({}, "demo", {"output_dir": output_dir, "device": "cpu"}))
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


def convergence(args: argparse.Namespace) -> None:
    """The step rules' accuracy, seconds and image-steps per second per step budget (see the docstring)."""
    import numpy as np

    from unmask.attacks.adaptive import ADAPTIVE_ATTACKS, AdaptiveOptions, DefenseTarget, adaptive_attack
    from unmask.config import resolve_config
    from unmask.data.sampling import stratified_sample
    from unmask.evaluation import Scored, fix_thresholds
    from unmask.experiment.plan import build_plan
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

    plan = build_plan(resolve_config({}, "demo", {"output_dir": args.output_dir, "device": "cpu"}))
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
    converged = min(accuracy.values())
    for rule in ("apgd", "cosine"):
        within = [steps for steps in args.steps if accuracy[rule, steps] <= converged + 2]
        reached = f"{seconds[rule, within[0]]:.1f} s ({within[0]} steps)" if within else "not within the budgets run"
        print(f"{rule}: converged worst case ({converged:.1f}% + 2 points) reached in {reached}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output-dir", default="results", help="the run's results folder (its models/ cache)")
    parser.add_argument("--random-init", action="store_true", help="random M and K instead of trained ones")
    parser.add_argument("--k-score-threshold", type=float, default=0.5)
    parser.add_argument("--convergence", action="store_true", help="compare the step rules on the real attack")
    parser.add_argument("--images", type=int, default=20, help="--convergence: test images")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100], help="--convergence: budgets")
    parser.add_argument("--epsilon", type=float, default=8.0, help="--convergence: L-inf epsilon, 0-255 scale")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.convergence:
        convergence(args)
        return
    device = torch.device(args.device)
    classifier, part_model, sources = load_models(None if args.random_init else args.output_dir, device=device)
    for model in (classifier, part_model):
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    view = PartView(part_model, score_threshold=args.k_score_threshold)
    extractor = PartExtractor(part_model, score_threshold=args.k_score_threshold, batch_size=max(args.batch_sizes))
    epsilon = 16 / 255
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"image size {IMAGE_SIZE}; {sources}")

    def m_step(x: torch.Tensor) -> None:
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(classifier(leaf).logsumexp(1).sum(), leaf)

    def k_step(x: torch.Tensor) -> None:
        leaf = x.detach().requires_grad_(True)
        outputs = view(leaf)
        expected = torch.zeros(len(x), 44, device=device)
        expected[:, :10] = 1
        torch.autograd.grad(view.hinge_loss(outputs, add=expected, remove=1 - expected).sum() + 0 * leaf.sum(), leaf)

    def joint_step(x: torch.Tensor) -> None:
        leaf = x.detach().requires_grad_(True)
        x_q = quantize_ste(leaf, x, epsilon, LINF)
        outputs = view(x_q)
        expected = torch.zeros(len(x), 44, device=device)
        expected[:, :10] = 1
        loss = classifier(x_q).logsumexp(1) + view.hinge_loss(outputs, add=expected, remove=1 - expected)
        view.hard_presence(outputs)
        gradient = torch.autograd.grad(loss.sum(), leaf)[0]
        LINF.project(leaf.detach() - 2 / 255 * LINF.direction(gradient), x, epsilon)

    def judge_step(x: torch.Tensor) -> None:
        with torch.no_grad():
            classifier(x).argmax(1)
        extractor.extract(x, batch_size=len(x))

    generator = torch.Generator().manual_seed(0)
    print(f"{'batch':>5} {'m img-step/s':>13} {'k img-step/s':>13} {'joint img-step/s':>17} {'judge img/s':>12} "
          f"{'k/m cost':>9} {'joint/m cost':>13} {'peak memory':>12}")
    for batch_size in args.batch_sizes:
        images = (torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 255).round() / 255
        images = images.to(device)
        timings = {label: time_per_image(step, images, repeats=args.repeats, device=device)
                   for label, step in (("m", m_step), ("k", k_step), ("joint", joint_step), ("judge", judge_step))}
        if device.type == "cuda":
            memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
            torch.cuda.reset_peak_memory_stats(device)
        else:  # the process's peak resident size so far (batch sizes run in the order given)
            memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
        print(f"{batch_size:>5} {1 / timings['m']:>13.1f} {1 / timings['k']:>13.1f} {1 / timings['joint']:>17.1f} "
              f"{1 / timings['judge']:>12.1f} {timings['k'] / timings['m']:>9.1f} {timings['joint'] / timings['m']:>13.1f} "
              f"{memory:>12}", flush=True)


if __name__ == "__main__":
    main()
