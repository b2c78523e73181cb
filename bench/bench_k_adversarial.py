"""Cost of K's adversarial training per recipe against clean training, measured in one run.

    python bench/bench_k_adversarial.py --batches 4            # the default run's K from results/models/
    python bench/bench_k_adversarial.py --weights /path/k-<hash>/weights.pt --data-dir data/synthetic
    python bench/bench_k_adversarial.py --random-init --batches 2   # same cost, no trained K needed
    python bench/bench_k_adversarial.py --device cuda --batches 20

Each recipe (``RECIPES``: clean training, and adversarial training with the training-loss or the
part-view inner losses, PGD-3 / FGSM-RS / free replays, with the clean mix or the TRADES-style
consistency) trains a fresh copy of the same K for ``--batches`` batches of K's training split
through the real loop (``unmask.train.part_extractor.train_part_extractor``; no checkpoint, no
validation), after one untimed warm-up batch of clean training; the benchmark prints seconds
per batch, seconds per epoch extrapolated to the whole training split, and the ratio to clean
training. Models: the default configuration's K from ``--output-dir``'s model cache (trained
there first when missing: minutes), a weights file, or random initialisation (the proposals
differ, so the cost of K's box head does a little).

``--curves fgsm:12 pgd3:6`` measures instead how UnMask-R's robust K improves with training, per
recipe and number of epochs: the robust K that ``python main.py train-k --k-adv-training
--k-adv-recipe R --k-adv-epochs N --k-adv-keep reclassify`` trains (taken from ``--output-dir``'s
model cache when that command or an earlier run of this one trained it, else trained here), and
per epoch its validation re-classification accuracy clean and under the few-step PGD transplant
attack, its part recall under the vanish attack, the training minutes so far, and the epoch it
kept (``--val-images`` validation images). The seconds are the training's own, recorded per
epoch when it ran (the record's provenance is this run's; a cached training's machine and load
are the ones it ran with).
"""

from __future__ import annotations

import argparse
import copy
import platform
from pathlib import Path

import torch
from torch.utils.data import Subset

from unmask.benchmark import BenchmarkRecord, add_json_option
from unmask.data.coco import PartSegmentationDataset, split_paths
from unmask.models.part_extractor import build_part_extractor
from unmask.train.part_extractor import PartExtractorTraining, load_part_extractor_weights, train_part_extractor
from unmask.train.robust_part_extractor import AdversarialStep, PartExtractorAdversarialTraining

IMAGE_SIZE = 128  # the default run's
SCORE_THRESHOLD = 0.5  # the default K's

_PARTS = ("vanish", "transplant")
RECIPES: dict[str, PartExtractorAdversarialTraining | None] = {
    "clean": None,
    "pgd3 training losses": PartExtractorAdversarialTraining(inner_loop="pgd", steps=3, losses=("training",)),
    "fgsm-rs training losses": PartExtractorAdversarialTraining(inner_loop="fgsm", losses=("training",)),
    "free x4 training losses": PartExtractorAdversarialTraining(inner_loop="free", steps=4, losses=("training",)),
    "pgd3 part view": PartExtractorAdversarialTraining(inner_loop="pgd", steps=3, losses=_PARTS),
    "fgsm-rs part view": PartExtractorAdversarialTraining(inner_loop="fgsm", losses=_PARTS),
    "fgsm-rs part view + clean 0.5": PartExtractorAdversarialTraining(inner_loop="fgsm", losses=_PARTS,
                                                                      clean_weight=0.5),
    "fgsm-rs part view + trades 1": PartExtractorAdversarialTraining(inner_loop="fgsm", losses=_PARTS, trades=1.0),
}
"""The recipes timed, by name (epsilon 8)."""


def load_k(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """K's starting weights: ``--weights``, random, or the default configuration's cached K."""
    from unmask.config import Config

    model = build_part_extractor(Config().k_model, image_size=IMAGE_SIZE)  # the default configuration's K
    if args.random_init:
        return model, "K: random init"
    if args.weights:
        return load_part_extractor_weights(model, args.weights), f"K: {args.weights}"
    from unmask.config import resolve_config
    from unmask.experiment.plan import build_plan
    from unmask.experiment.stages import prepare_data, trained_part_extractor
    from unmask.runtime import Runtime
    from unmask.train.loop import ModelCache

    plan = build_plan(resolve_config({}, "demo", {"output_dir": args.output_dir, "data_dir": args.data_dir,
                                                  "device": "cpu"}))
    runtime = Runtime.start("cpu", verbosity=1)
    prepare_data(plan.data, runtime, m_splits=(), k_splits=plan.k_splits)
    k = trained_part_extractor(plan.k, plan.data, ModelCache(plan.models_dir, runtime, plan.allow_random_init))
    return k.extractor.model.cpu(), f"K: models/{k.directory.name}"


CURVE_RECIPES: dict[str, dict[str, object]] = {
    "fgsm": {"k_adv_recipe": "fgsm"},
    "pgd3": {"k_adv_recipe": "pgd", "k_adv_steps": 3},
}
"""The recipes ``--curves`` trains, as the command-line options of ``train-k`` (the robust
profile's part-view inner losses, epsilon 8)."""


def curves(args: argparse.Namespace, record: BenchmarkRecord) -> None:
    """The robust K's validation figures per epoch for each ``RECIPE:EPOCHS`` of ``--curves``."""
    from unmask.config import resolve_config
    from unmask.experiment.outputs import robust_training_record
    from unmask.experiment.plan import build_plan
    from unmask.experiment.stages import prepare_data, trained_robust_part_extractor
    from unmask.runtime import Runtime
    from unmask.train.loop import ModelCache

    rows = []
    print(f"{'recipe':<10} {'epoch':>5} {'minutes':>8} {'re-class.':>9} {'attacked':>9} {'vanish recall':>13} kept")
    for curve in args.curves:
        name, _, epochs = curve.partition(":")
        if name not in CURVE_RECIPES or not epochs.isdigit():
            raise SystemExit(f"--curves: expected RECIPE:EPOCHS with RECIPE one of {', '.join(CURVE_RECIPES)}, "
                             f"got {curve!r}")
        overrides = {"output_dir": args.output_dir, "data_dir": args.data_dir, "device": args.device,
                     "k_adv_training": True, "k_adv_epochs": int(epochs), "k_adv_keep": "reclassify",
                     "k_adv_val_images": args.val_images, **CURVE_RECIPES[name]}
        plan = build_plan(resolve_config({}, "demo", overrides))
        runtime = Runtime.start(args.device, verbosity=1)
        prepare_data(plan.data, runtime, m_splits=(), k_splits=plan.k_splits)
        k_robust = trained_robust_part_extractor(plan.k, plan.k_robust, plan.data,
                                                 ModelCache(plan.models_dir, runtime, plan.allow_random_init))
        training = robust_training_record(k_robust)
        if training is None:
            raise SystemExit(f"{k_robust.directory}: no training history")
        minutes = 0.0
        for epoch in training["epochs"]:
            minutes += epoch["seconds"] / 60
            row = {"recipe": curve, "epoch": epoch["epoch"], "minutes": minutes,
                   "reclassify_%": 100 * epoch["val_clean_reclassify_accuracy"],
                   "attacked_reclassify_%": 100 * epoch["val_reclassify_accuracy"],
                   "vanish_part_recall_%": 100 * epoch["val_vanish_part_recall"],
                   "kept": epoch["epoch"] == training["kept_epoch"]}
            rows.append(row)
            print(f"{curve:<10} {row['epoch']:>5} {minutes:>8.1f} {row['reclassify_%']:>8.1f}% "
                  f"{row['attacked_reclassify_%']:>8.1f}% {row['vanish_part_recall_%']:>12.1f}% "
                  f"{'*' if row['kept'] else ''}", flush=True)
    record.table("curves", rows, description=f"the robust K per recipe:epochs and epoch, on {args.val_images} "
                                             "validation images: re-classification accuracy clean and under a "
                                             "5-step PGD transplant attack at epsilon 8, part recall under a 5-step "
                                             "vanish attack, training minutes so far, the kept epoch")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per recipe")
    parser.add_argument("--batch-size", type=int, default=8, help="K's training batch size (the default run's: 8)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output-dir", default="results", help="the run's results folder (its models/ cache)")
    parser.add_argument("--data-dir", default="data/synthetic", help="the dataset root (K's VOC2010/ inside)")
    parser.add_argument("--weights", default="", help="K's weights file instead of the cache's")
    parser.add_argument("--random-init", action="store_true", help="a randomly initialised K")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE",
                        help=f"recipes to time (default: all): {'; '.join(RECIPES)}")
    parser.add_argument("--curves", nargs="+", default=[], metavar="RECIPE:EPOCHS",
                        help=f"the robust K's validation figures per epoch instead ({', '.join(CURVE_RECIPES)})")
    parser.add_argument("--val-images", type=int, default=64, help="--curves: validation images per epoch")
    add_json_option(parser)
    args = parser.parse_args(argv)
    record = BenchmarkRecord("bench_k_adversarial", args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.curves:
        curves(args, record)
        record.write(args.json, device=torch.device(args.device))
        return
    device = torch.device(args.device)
    start, source = load_k(args)
    train_set = PartSegmentationDataset(*split_paths(Path(args.data_dir), "train"), hflip_prob=0.5)
    images = (args.batches + 1) * args.batch_size
    if len(train_set) < images:
        raise SystemExit(f"K's training split has {len(train_set)} images, fewer than {images}; lower --batches")
    subset = Subset(train_set, range(images))
    for index in range(images):  # decoded once, before any timing
        train_set[index]
    batches_per_epoch = len(train_set) // args.batch_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {source}; "
          f"batch size {args.batch_size}, {args.batches} timed batches per recipe; an epoch: {batches_per_epoch} "
          f"batches ({len(train_set)} images)")
    training = PartExtractorTraining(epochs=1, batch_size=args.batch_size, lr=0.004, warmup_steps=0)
    train_part_extractor(copy.deepcopy(start), Subset(train_set, range(args.batch_size)), None, training,
                         device=device, progress=False)  # warm-up
    print(f"{'recipe':<32} {'s/batch':>8} {'s/epoch':>8} {'x clean':>8}")
    clean_seconds = None
    rows = []
    for label in args.recipes:
        recipe = RECIPES[label]
        step = None if recipe is None else AdversarialStep(recipe, score_threshold=SCORE_THRESHOLD, seed=0)
        timed = Subset(subset, range(args.batch_size, images))
        result = train_part_extractor(copy.deepcopy(start), timed, None, training, device=device, progress=False,
                                      step=step)
        per_batch = result.seconds / args.batches
        clean_seconds = per_batch if recipe is None else clean_seconds
        ratio = f"{per_batch / clean_seconds:8.2f}" if clean_seconds else f"{'':>8}"
        print(f"{label:<32} {per_batch:8.2f} {per_batch * batches_per_epoch:8.0f} {ratio}", flush=True)
        rows.append({"recipe": label, "s per batch": per_batch, "s per epoch": per_batch * batches_per_epoch,
                     "x clean": per_batch / clean_seconds if clean_seconds else None})
    record.table("recipes", rows, description=f"K's training per recipe ({source}; batches of {args.batch_size}, "
                                              f"{args.batches} timed per recipe; an epoch is {batches_per_epoch} "
                                              "batches).")
    record.write(args.json, device=device)


if __name__ == "__main__":
    main()
