"""Command line: ``python main.py [command] [--option value ...]``.

Every field of ``unmask.config.Config`` is an option; values resolve as defaults -> the
repository's config.py ``SETTINGS`` -> ``--profile`` -> command line, and the experiment's plan
is built from them before any work starts, so a typo fails at once with the list of valid names
instead of deep inside a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from unmask.config import PROFILES, Config, ConfigError, format_config, option_name, resolve_config, show_value
from unmask.io import UnmaskError, file_lock, lock_path

if typing.TYPE_CHECKING:
    from unmask.experiment import Plan

# --- building the parser from the dataclass --------------------------------------------------


def _comma_separated(item_type: type) -> Callable[[str], tuple[Any, ...]]:
    """Parser of a comma-separated option whose items are ``item_type`` (str, float, int)."""

    def parse(text: str) -> tuple[Any, ...]:
        return tuple(item_type(item.strip()) for item in text.split(",") if item.strip())

    parse.__name__ = f"comma-separated {item_type.__name__}"  # argparse's "invalid ... value" names it
    return parse


def build_parser(profiles: Mapping[str, Mapping[str, Any]] = PROFILES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        usage=f"python main.py [{{{','.join(COMMANDS)}}}] [--option VALUE ...]\n"
              f"       python main.py {{{','.join(DATA_COMMANDS)}}} ... (python main.py publish --help)",
        description="UnMask: adversarial detection and defense through building-block alignment. "
        "Every option overrides the field of the same name in config.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = "; ".join([*(f"{name}: {help_text}" for name, (help_text, _) in COMMANDS.items()),
                          *(f"{name}: {help_text}" for name, help_text in DATA_COMMANDS.items())])
    parser.add_argument("command", nargs="?", default="run", choices=tuple(COMMANDS), help=commands)
    parser.add_argument("--profile", choices=tuple(profiles), default="demo",
                        help="Named set of overrides from config.PROFILES, applied before the command line.")
    parser.add_argument("--grid", action="store_true",
                        help="run: the original's experiment grid (grid class sets x grid models x "
                        "{adversarial training, none}), skipping finished configurations.")

    types = typing.get_type_hints(Config)
    defaults = Config()
    group = parser.add_argument_group("general")
    for config_field in dataclasses.fields(Config):
        metadata = config_field.metadata
        if "group" in metadata:
            group = parser.add_argument_group(metadata["group"])
        flags = [option_name(config_field.name), *metadata.get("aliases", ())]
        kind = types[config_field.name]
        default = getattr(defaults, config_field.name)
        choices = f" One of: {', '.join(metadata['choices'].values())}." if "choices" in metadata else ""
        common: dict[str, Any] = {"dest": config_field.name, "default": argparse.SUPPRESS,
                                  "help": f"{metadata.get('help', '')}{choices} (default: {show_value(default)})"}
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(*flags, type=_comma_separated(typing.get_args(kind)[0]), metavar="A,B,...", **common)
        else:
            group.add_argument(*flags, type=kind, metavar=kind.__name__.upper(), **common)
    # defaults are shown in each help text; the formatter would print "==SUPPRESS==" otherwise
    parser.formatter_class = argparse.HelpFormatter
    return parser


# --- commands --------------------------------------------------------------------------------


def _run(plan: Plan, args: argparse.Namespace) -> int:
    from unmask.experiment import run_experiment, run_grid

    if args.grid:
        run_grid(plan)
    else:
        run_experiment(plan)
    return 0


def _grid_report(plan: Plan, args: argparse.Namespace) -> int:
    from unmask.experiment import grid_report

    directory = grid_report(plan)
    if plan.verbosity > 0:
        print(f"grid-report: {directory / 'grid.md'} and grid.json")
    return 0


def _prepare(plan: Plan, args: argparse.Namespace) -> int:
    if getattr(args, "prepare_source", None) == "pascal-part":
        return _prepare_pascal_part(plan, args)
    if plan.data.synthetic is not None:
        return _prepare_synthetic(plan)
    print(f"prepare: the {plan.data.dataset!r} dataset is not generated; download it as docs/reproducing-the-paper.md says.")
    return 1


def _prepare_synthetic(plan: Plan) -> int:
    import time

    from unmask.data.synthetic import generate_synthetic, manifest_matches

    spec, root = plan.data.synthetic, plan.data.root
    # the lock ensure_synthetic holds: a run generating the same world meanwhile is waited for
    with file_lock(lock_path(root), what="generating the synthetic world"):
        if manifest_matches(root, spec):
            if plan.verbosity > 0:
                print(f"prepare: the synthetic world in {root} matches the configuration (manifest.json); reusing it")
            return 0
        start = time.perf_counter()
        generate_synthetic(root, spec, progress=plan.verbosity > 0, workers=plan.data.synthetic_workers)
        elapsed = time.perf_counter() - start
    if plan.verbosity > 0:
        classes = len(spec.m_classes)
        images = classes * spec.images_per_class + spec.k_images
        print(f"prepare: drew {images} images ({classes} classes x {spec.images_per_class} for M, {spec.k_images} "
              f"for K) into {root} in {elapsed:.1f} s ({images / elapsed:.0f} images/s)")
    return 0


def _prepare_pascal_part(plan: Plan, args: argparse.Namespace) -> int:
    from unmask.data.pascal_part import convert_pascal_part

    pascal = plan.pascal
    if pascal.root is None:
        raise ConfigError("prepare --dataset pascal-part needs --pascal-root DIR: the folder holding "
                          "Annotations_Part/ and VOC2010's JPEGImages/")
    if not hasattr(args, "data_dir"):
        # the default data folder holds the synthetic world; K's converted data must not land there by accident
        raise ConfigError("prepare --dataset pascal-part needs --out DIR: K's data is written to DIR/VOC2010/")
    convert_pascal_part(pascal.root, plan.data.root, merge_mode=pascal.merge_mode, seed=pascal.seed,
                        progress=plan.verbosity > 0)
    return 0


TRAIN_M_VECTORS = ("pgd_linf:8", "pgd_linf:16")
"""The attacks ``train-m`` reports each trained M's accuracy under."""


def _train_m(plan: Plan, args: argparse.Namespace) -> int:
    from unmask.attacks import GRAY_BOX_ATTACKS
    from unmask.experiment.stages import classifier_summary, load_classifier_data, prepare_data, trained_classifiers
    from unmask.train.loop import ModelCache

    runtime = plan.runtime.start()
    prepare_data(plan.data, runtime)
    data = load_classifier_data(plan.data)
    m, adv_trained = trained_classifiers(plan.m, plan.adv_trained, data,
                                         ModelCache(plan.models_dir, runtime, plan.allow_random_init),
                                         m_checkpoint=plan.m_checkpoint, inference=plan.inference)
    if not runtime.distributed.is_main:
        return 0
    test_images, test_labels = data["test"].tensors()
    for title, trained in (("M", m), ("adversarially trained M", adv_trained)):
        if trained is None:
            continue
        figures = classifier_summary(trained, test_images, test_labels, GRAY_BOX_ATTACKS.parse(TRAIN_M_VECTORS),
                                     plan.attack, seed=plan.evaluation.seed)
        print(f"{title} ({trained.description}, {trained.seconds:.1f} s of training): test accuracy "
              f"{', '.join(f'{label} {value:.3f}' for label, value in figures.items())} ({len(test_labels)} images)")
    return 0


def _train_k(plan: Plan, args: argparse.Namespace) -> int:
    import json

    from unmask.experiment.outputs import robust_training_record
    from unmask.experiment.stages import (
        part_extractor_metrics,
        prepare_data,
        trained_part_extractor,
        trained_robust_part_extractor,
    )
    from unmask.train.loop import ModelCache

    runtime = plan.runtime.start()
    cache = ModelCache(plan.models_dir, runtime, plan.allow_random_init)
    prepare_data(plan.data, runtime, m_splits=(), k_splits=plan.k_splits)
    precision = plan.inference.effective_precision(runtime.device)
    k = trained_part_extractor(plan.k, plan.data, cache, checkpoint=plan.k_checkpoint, precision=precision)
    k_robust = None if plan.k_robust is None else trained_robust_part_extractor(
        plan.k, plan.k_robust, plan.data, cache, checkpoint=plan.k_checkpoint, precision=precision)
    if not runtime.distributed.is_main:
        return 0
    for name, model, extra in (("K", k, {}), ("the robust K", k_robust, {"training": robust_training_record(k_robust)})):
        if model is None:
            continue
        metrics, metrics_file = part_extractor_metrics(model, plan.data, cache)
        if plan.verbosity > 0:
            print(json.dumps({**metrics, **extra}, indent=2))
            print(f"train-k: {name}'s weights are in {model.directory}, its test metrics in {metrics_file}")
    return 0


def _import_m(plan: Plan, args: argparse.Namespace) -> int:
    """The original's released M as a weights file for ``--m-checkpoint`` (see
    ``import_original_classifier``). It records the original's 150 px (Resize(150) ->
    CenterCrop(150)) unless ``--image-size`` is given on the command line: the default image
    size is the synthetic demo's, which that M never saw."""
    from unmask.models.classifier import PAPER_IMAGE_SIZE
    from unmask.train.classifier import import_original_classifier

    if plan.original_m is None:
        raise ConfigError("import-m needs --original-m FILE: the original's M, saved with torch.save(model)")
    spec = dataclasses.replace(plan.m, image_size=getattr(args, "image_size", PAPER_IMAGE_SIZE))
    destination = plan.imported_m or plan.output_dir / "imported" / f"m-{spec.architecture}-{plan.class_set.name}.pt"
    import_original_classifier(plan.original_m, destination, spec)
    if plan.verbosity > 0:
        print(f"import-m: {plan.original_m} -> {destination} ({spec.architecture}, classes "
              f"{', '.join(spec.classes)}, {spec.image_size} px, no input normalisation); use it with: python main.py "
              f"--m-checkpoint {destination} --model {spec.architecture} --class-set {plan.class_set.name} "
              f"--image-size {spec.image_size}")
    return 0


EXAMPLES_FIGURE = "images/synthetic_examples.png"


def _examples(plan: Plan, args: argparse.Namespace) -> int:
    from unmask.data.synthetic import SyntheticSpec, render_examples

    path = render_examples(EXAMPLES_FIGURE, spec=plan.data.synthetic or SyntheticSpec())
    if plan.verbosity > 0:
        print(f"examples: one synthetic object per class with its part masks saved to {path}")
    return 0


README_FIGURES = ("accuracy", "roc", "example", "threat_models")


def _figures(plan: Plan, args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from unmask.experiment import run_experiment

    directory = run_experiment(plan)  # re-reports a finished run without recomputing it
    for stem in README_FIGURES:
        if not (directory / f"{stem}.png").is_file():  # threat_models: only with the adaptive evaluation
            continue
        target = Path("images") / f"results_{stem}.png"
        shutil.copyfile(directory / f"{stem}.png", target)
        if plan.verbosity > 0:
            print(f"figures: {directory / f'{stem}.png'} -> {target}")
    return 0


def _active_tests(plan: Plan, args: argparse.Namespace) -> int:
    from unmask.experiment.active_tests import run_active_tests

    run_active_tests(plan)
    return 0


COMMANDS: dict[str, tuple[str, Callable[[Plan, argparse.Namespace], int]]] = {
    "run": ("prepare data if missing, train or load M, adversarially trained M and K, attack, evaluate and "
            "report (the default)", _run),
    "grid-report": ("combine the finished configurations of --grid (run as jobs with --grid-shard) into "
                    "results/grid/grid.md and grid.json, recomputing nothing", _grid_report),
    "prepare": ("generate the synthetic part world (--dataset synthetic) or convert raw PASCAL-Part "
                "(--dataset pascal-part --pascal-root DIR --out DIR)", _prepare),
    "train-m": ("train M and, with --adv-training, the adversarial-training baseline", _train_m),
    "train-k": ("train K (and, with --k-adv-training, UnMask-R's robust K) and evaluate it on the test split (COCO "
                "mAP, part precision and recall; the robust K's fine-tune per epoch)", _train_k),
    "import-m": ("write the original's released M (--original-m FILE, saved with torch.save(model)) as a weights "
                 "file for --m-checkpoint (--imported-m), read without running code in it", _import_m),
    "examples": ("render example images with their part masks to images/synthetic_examples.png", _examples),
    "figures": ("run (or re-report) the configured experiment and copy its figures to images/results_*.png, "
                "the ones the README and docs/ show", _figures),
    "active-tests": ("attack unit tests (Zimmermann et al. 2022) on the run's models: each white-box attack of "
                     "--active-attacks against UnMask modified so that an adversarial example provably exists; "
                     "results/<run>/active/active_tests.md and .json", _active_tests),
}


DATA_COMMANDS: dict[str, str] = {
    "publish": "copy a finished run's metrics.json and tables.md (or a benchmark's --json record) to "
               "results/published/NAME/, the data the documentation is generated from: publish RUN_FOLDER --name NAME",
    "compare-rules": "the deployed decision rules side by side, from their runs (published names or run folders, one "
                     "rule each): clean cost, ceiling and converged white-box figures against adversarial training, "
                     "as a record to publish (--json PATH) and a figure (--figure STEM): compare-rules RUN... --json PATH",
    "docs": "regenerate every result table and cited figure of README.md and docs/ from results/published/ "
            "(--check: write nothing, report what differs)",
}
"""Commands on published results rather than on an experiment: they take their own arguments."""


def _compare_rules(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from unmask.publish import PUBLISHED_DIR, read_metrics_of
    from unmask.rule_comparison import compare_rules, plot_rules

    parser.add_argument("runs", nargs="+", metavar="RUN", help="a published run's name (results/published/NAME/) or a "
                        "finished run's folder, one per decision rule (the paper's gives the clean reference)")
    parser.add_argument("--json", type=Path, required=True, metavar="PATH", help="write the comparison's record here "
                        "(python main.py publish PATH --name NAME publishes it)")
    parser.add_argument("--figure", type=Path, default=None, metavar="STEM", help="also draw the defense every run "
                        "attacked, rule by rule, as STEM.png and STEM.pdf")
    parser.add_argument("--baselines", nargs="*", default=[], metavar="RUN", help="runs that attacked adversarial "
                        "training at other budgets (half of each compared one: Tramèr's check)")
    args = parser.parse_args(argv)
    try:
        runs = [(run, read_metrics_of(run, published=PUBLISHED_DIR)) for run in args.runs]
        baselines = [read_metrics_of(run, published=PUBLISHED_DIR) for run in args.baselines]
        record = compare_rules(runs, baselines=baselines)
    except UnmaskError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    record.write(args.json)
    if args.figure is not None:
        print(f"compare-rules: figure {', '.join(str(path) for path in plot_rules(record, args.figure))}")
    return 0


def _data_command(argv: Sequence[str]) -> int:
    """``python main.py publish RUN_FOLDER --name NAME`` and ``python main.py docs [--check]``."""
    from unmask.docs import generate_docs
    from unmask.environment import describe_environment
    from unmask.publish import PUBLISHED_DIR, publish

    command = argv[0]
    parser = argparse.ArgumentParser(prog=f"python main.py {command}", description=DATA_COMMANDS[command])
    if command == "compare-rules":
        return _compare_rules(parser, argv[1:])
    if command == "publish":
        parser.add_argument("source", metavar="RUN_FOLDER", help="a finished run's folder (results/<run>/), or a "
                            "benchmark's JSON record (bench/*.py --json PATH)")
        parser.add_argument("--name", required=True, help="the publication's name: results/published/NAME/, and "
                            "what the documentation's markers call it (e.g. default)")
    else:
        parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated table or "
                            "value differs from the data or a marker names something that does not exist")
        parser.add_argument("--root", default=".", help="the repository: README.md, docs/ and results/published/")
    args = parser.parse_args(argv[1:])
    try:
        if command == "publish":
            publication = publish(args.source, args.name, published=PUBLISHED_DIR)
            files = ", ".join(sorted(path.name for path in publication.folder.iterdir()))
            print(f"publish: {args.source} -> {publication.folder}/ ({files}): "
                  f"{describe_environment(publication.provenance)}")
            print("publish: regenerate the documentation with: python main.py docs")
            return 0
        report = generate_docs(args.root, check=args.check)
    except UnmaskError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in report.problems + (report.changed if args.check else []):
        print(f"docs: {problem}", file=sys.stderr)
    if not args.check:
        rewritten = ", ".join(str(path) for path in report.differing) or "nothing (every block matched the data)"
        print(f"docs: rewrote {rewritten}")
    return 0 if (not report.problems and (report.ok or not args.check)) else 1


def parse(argv: Sequence[str] | None = None, *, settings: Mapping[str, Any] | None = None,
          profiles: Mapping[str, Mapping[str, Any]] = PROFILES) -> tuple[Config, Plan, argparse.Namespace]:
    """The resolved configuration, its plan and the parsed arguments of a command line
    (``ConfigError`` on a bad value): what ``main`` runs, and what the benchmarks reuse to take
    the same options."""
    from unmask.experiment import build_plan

    parser = build_parser(profiles)
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    if args.command == "prepare" and overrides.get("dataset") == "pascal-part":
        # pascal-part is a source for `prepare`, not a dataset an experiment runs on
        args.prepare_source = overrides.pop("dataset")
    config = resolve_config(settings, args.profile, overrides, profiles=profiles)
    return config, build_plan(config), args


USER_CHECKPOINTS = {
    "m_checkpoint": "M's trained weights: a state dict of the --model architecture for the class set (weights.pt "
                    "of a results/models/m-* folder, or torch.save(model.state_dict()))",
    "k_checkpoint": "K's trained weights: a state dict of the --k-model part extractor (weights.pt of a "
                    "results/models/k-* folder)",
}
"""What ``--m-checkpoint`` and ``--k-checkpoint`` take, as their errors say."""


def check_user_checkpoints(plan: Plan) -> None:
    """Read the weights files named by ``--m-checkpoint`` / ``--k-checkpoint`` before any work
    (safely: tensors only), so that a wrong file fails in one line naming it, not after the data
    is generated and other models are trained."""
    from unmask.io import read_weights

    for name, expected in USER_CHECKPOINTS.items():
        path = getattr(plan, name)
        if path is not None:
            read_weights(path, user_option=option_name(name), expected=expected)


def main(argv: Sequence[str] | None = None, *, settings: Mapping[str, Any] | None = None,
         profiles: Mapping[str, Mapping[str, Any]] = PROFILES) -> int:
    """``python main.py``: ``settings`` and ``profiles`` come from the repository's config.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DATA_COMMANDS:
        return _data_command(argv)
    try:
        config, plan, args = parse(argv, settings=settings, profiles=profiles)
    except ConfigError as error:
        print(f"python main.py: error: {error}\n(python main.py --help lists every option)", file=sys.stderr)
        return 2
    if plan.verbosity > 0:
        print(f"configuration (profile {args.profile!r}):\n{format_config(config)}\n", file=sys.stderr)
    try:
        check_user_checkpoints(plan)
        return COMMANDS[args.command][1](plan, args)
    except (UnmaskError, ValueError, OSError) as error:
        # expected failures (bad options, data, images, annotation files or checkpoints, missing
        # pretrained weights, a full disk): one clear line; --verbosity 2 shows the traceback
        if plan.verbosity >= 2:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if plan.verbosity >= 2:
            raise
        print("interrupted: finished epochs and attack vectors are saved; run the same command again to resume",
              file=sys.stderr)
        return 130
