"""A finished run's folder as a library reads it: its M, K, class set, thresholds and images,
rebuilt exactly as the run had them, without writing anything.

A run folder (``<output dir>/<run name>/``, written by ``python main.py``) holds ``config.json``
(the result-determining configuration), ``metrics.json`` (the thresholds it fixed, and the
weights file of each model), the clean predictions ``clean.npz`` and ``validation.npz`` and their
stamps (the digests of the images and of M's and K's weights they were made from, and how M and
K ran), and ``per_image.csv``. ``FinishedRun.open`` reads them; each model is looked up where
``metrics.json`` says (runs made before it said so: ``--m-checkpoint`` / ``--k-checkpoint``, then
the run's model cache, ``<output dir>/models/``) and accepted only when its weights have the
digest the run's predictions were stamped with, so the rebuilt pipeline is the run's or none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import torch

from unmask.config import resolve_config
from unmask.data.folders import ClassFolderDataset
from unmask.evaluation import Predictions, Scored, fix_thresholds
from unmask.experiment.evaluator import ImageSet
from unmask.experiment.folder import RunFolder
from unmask.experiment.plan import Plan, build_plan
from unmask.experiment.stages import TrainedPartExtractor, load_part_extractor
from unmask.io import UnmaskError
from unmask.models.classifier import ClassifierInference, InferenceOptions
from unmask.models.part_extractor import PartExtractor
from unmask.parts import ClassSet
from unmask.provenance import read_stamp, tensors_digest
from unmask.rules import DecisionRule, Evidence, decision_rule
from unmask.train.classifier import load_classifier_file, load_trained_classifier
from unmask.train.loop import WEIGHTS_FILE

T = TypeVar("T")


class RunFolderError(UnmaskError, FileNotFoundError):
    """A run folder that lacks what is needed, or whose models or images cannot be found; the
    message names the file and what was expected."""


def _quiet(message: str) -> None:
    """Loading messages are not needed: every model found is checked against the run's digests."""


@dataclass(frozen=True)
class SavedClassifier:
    """An M read from a weights file, with what the file records about it."""

    model: torch.nn.Module
    class_set: ClassSet
    image_size: int
    architecture: str


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu") -> SavedClassifier:
    """M from a weights file of this project (``models/m-*/weights.pt`` of a run, or what
    ``python main.py import-m`` wrote from the original's released M), built as the file records
    it (architecture, classes in label order, image size, input normalisation), in eval mode on
    ``device``. Its classes become an ad-hoc class set in label order (``ClassSet.of``)."""
    model, spec = load_classifier_file(path, device=device)
    return SavedClassifier(model, ClassSet.of(spec.classes), spec.image_size, spec.architecture)


@dataclass(frozen=True)
class FinishedRun:
    """A finished run, read-only (see the module's docstring). ``classifier`` and
    ``part_extractor`` are the run's M (the adversarially trained one with ``--m-adv-trained``)
    and K with its detection rule, on ``device``, running as the run ran them (precision,
    channels-last, compile); ``threshold(fpr)`` the detection threshold; ``images(split)`` the
    split's images (for ``test``, the images the run evaluated, in ``per_image.csv``'s order)."""

    folder: Path
    plan: Plan
    metrics: Mapping[str, Any]
    stamp: Mapping[str, Any]
    """The fingerprint the run's clean test predictions were stamped with."""
    device: torch.device
    data_dir: Path | None = None
    """Where the run's images are (None: where its configuration says)."""

    @classmethod
    def open(cls, folder: str | Path, *, device: str | torch.device = "cpu",
             data_dir: str | Path | None = None) -> FinishedRun:
        """The run in ``folder``; models load on ``device`` when first used. ``data_dir``: where
        the run's images are, when not where its ``config.json`` says (relative to the current
        folder or to the one above the output folder, where ``python main.py`` ran)."""
        folder = Path(folder)
        files = RunFolder(folder)
        config = _read_json(folder / "config.json", "the run's configuration (python main.py writes it first)")
        metrics = _read_json(folder / "metrics.json", "the run's figures (python main.py writes them when the run "
                                                      "has finished)")
        stamp = read_stamp(files.clean)
        if stamp is None or not isinstance(stamp.get("m"), dict) or not isinstance(stamp.get("k"), dict):
            raise RunFolderError(f"{files.clean} or its stamp is missing; expected the clean predictions of a "
                                 "finished run")
        options = {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()
                   if key != "format"}
        # the plan only gives the models' specs, the class set and the images: it is built for the
        # CPU, which changes nothing of them (each model is found by its weights' digest)
        plan = build_plan(resolve_config(overrides={**options, "device": "cpu", "verbosity": 0,
                                                    "output_dir": str(folder.parent)}), with_grid=False)
        return cls(folder, plan, metrics, stamp, torch.device(device),
                   Path(data_dir) if data_dir is not None else None)

    @classmethod
    def latest(cls, output_dir: str | Path = "results", *, device: str | torch.device = "cpu",
               data_dir: str | Path | None = None) -> FinishedRun:
        """The run that finished last under ``output_dir`` (``python main.py``'s ``--output-dir``):
        the run folder whose ``metrics.json``, written when a run ends, is the newest; opened as
        ``open`` opens it. The run's folder name carries a hash of its configuration, so this is
        how a script opens "the run I just made" without naming it."""
        output_dir = Path(output_dir)
        finished = [path for path in output_dir.glob("*/metrics.json") if (path.parent / "config.json").is_file()]
        if not finished:
            raise RunFolderError(f"no finished run in {output_dir}/ (expected {output_dir}/<run>/metrics.json and "
                                 "config.json): run python main.py first, or open a run's folder with "
                                 "FinishedRun.open(folder)")
        newest = max(finished, key=lambda path: path.stat().st_mtime_ns)
        return cls.open(newest.parent, device=device, data_dir=data_dir)

    @property
    def class_set(self) -> ClassSet:
        return self.plan.class_set

    # --- the models -------------------------------------------------------------------------

    @cached_property
    def classifier(self) -> ClassifierInference:
        """The run's M, as its evaluation ran it."""
        recorded = self.stamp["m"]
        options = InferenceOptions(precision=recorded.get("precision", "float32"),
                                   channels_last=bool(recorded.get("channels_last", False)),
                                   compile=bool(recorded.get("compile", False)))
        prefix = "m-adv-" if self.plan.m.adversarial else "m-"
        candidates = [path for path in self._models_dir.glob(f"{prefix}*/{WEIGHTS_FILE}")
                      if self.plan.m.adversarial or not path.parent.name.startswith("m-adv-")]
        model = self._find("m", "M", self.plan.m_checkpoint, candidates,
                           lambda path: load_trained_classifier(path, self.plan.m, device=self.device, log=_quiet),
                           lambda model: tensors_digest(model.state_dict()))
        return ClassifierInference(model, options)

    @cached_property
    def trained_part_extractor(self) -> TrainedPartExtractor:
        """The run's K with its detection rule, its weights file and fingerprint."""
        recorded = self.stamp["k"]
        precision = recorded.get("precision", "float32")
        k = self._find("k", "K", self.plan.k_checkpoint, sorted(self._models_dir.glob(f"k-*/{WEIGHTS_FILE}")),
                       lambda path: load_part_extractor(self.plan.k, path, device=self.device, precision=precision,
                                                        log=_quiet),
                       lambda k: k.fingerprint["weights"])
        if k.fingerprint["rule"] != recorded.get("rule", k.fingerprint["rule"]):
            raise RunFolderError(f"{self.folder / 'config.json'} gives K's detection rule {k.fingerprint['rule']}, but "
                                 f"the run's predictions were made with {recorded['rule']}")
        return k

    @property
    def part_extractor(self) -> PartExtractor:
        """The run's K with its detection rule (score threshold, NMS, detections per image)."""
        return self.trained_part_extractor.extractor

    @property
    def _models_dir(self) -> Path:
        return self.folder.parent / "models"

    def _find(self, role: str, what: str, checkpoint: Path | None, cached: list[Path], load: Callable[[Path], T],
              digest_of: Callable[[T], str]) -> T:
        """The first model among the recorded weights file, ``checkpoint`` and ``cached`` whose
        weights have the digest the run's predictions were stamped with."""
        expected = self.stamp[role]["weights"]
        tried = []
        for path in self._candidates(role, checkpoint, cached):
            model = load(path)
            if digest_of(model) == expected:
                return model
            tried.append(str(path))
        raise RunFolderError(
            f"no weights file with the {what} run {self.folder.name} was evaluated with (weights digest {expected}) was "
            f"found; tried: {', '.join(tried) or 'none'}. Expected it where {self.folder / 'metrics.json'} says, or "
            f"in {self._models_dir}/")

    def _candidates(self, role: str, checkpoint: Path | None, cached: list[Path]) -> Iterator[Path]:
        recorded = (self.metrics.get("models") or {}).get("weights") or {}
        paths = [Path(recorded[role])] if recorded.get(role) else []
        paths += [checkpoint] if checkpoint is not None else []
        seen = set()
        for path in [*paths, *cached]:
            for place in (path,) if path.is_absolute() else (self.folder.parent / path, Path.cwd() / path,
                                                             self.folder.parent.parent / path):
                if place.is_file() and place.resolve() not in seen:
                    seen.add(place.resolve())
                    yield place

    # --- thresholds and images --------------------------------------------------------------

    def threshold(self, fpr: float | None = None) -> float:
        """The set-Jaccard detection threshold the run fixed on its clean validation images at
        ``fpr`` (None: the run's ``--detection-fpr``); at another rate, fixed the same way on the
        run's saved validation predictions."""
        recorded = self.metrics.get("thresholds") or {}
        if fpr is None or fpr == recorded.get("target_fpr"):
            if "set_jaccard" not in recorded:
                raise RunFolderError(f"{self.folder / 'metrics.json'} records no thresholds")
            return float(recorded["set_jaccard"])
        path = RunFolder(self.folder).validation
        if not path.is_file():
            raise RunFolderError(f"{path} is missing; expected the run's clean validation predictions")
        return fix_thresholds(Scored.of(Predictions.load(path), self.class_set), fpr).set_jaccard

    def rule(self, fpr: float | None = None) -> DecisionRule:
        """The decision rule the run deployed (``--decision-rule``, ``--flagged-decision``), fixed
        at ``fpr`` (None: the run's ``--detection-fpr``) on the run's saved clean validation
        predictions, as the run fixed it. The part-classifier rule also needs K's outputs on the
        training images, which a run does not save: build it with ``train_part_classifier``."""
        spec, fpr = self.plan.evaluation.decision, self.plan.evaluation.detection_fpr if fpr is None else fpr
        if spec.rule == "part-classifier":
            raise RunFolderError("the part-classifier rule is trained on K's outputs for the training images, which "
                                 "the run folder does not keep: build PartClassifierRule(classifier="
                                 "train_part_classifier(...)) and pass it as UnMask(..., rule=)")
        path = RunFolder(self.folder).validation
        if not path.is_file():
            raise RunFolderError(f"{path} is missing; expected the run's clean validation predictions")
        predictions = Predictions.load(path)
        return decision_rule(spec.rule, self.class_set, reject=spec.reject).fixed(
            Evidence(predictions.m, predictions.parts, predictions.part_scores), fpr=fpr)

    def images(self, split: str = "test") -> ImageSet:
        """``split``'s images (in [0, 1]), labels and file names: for ``test`` the images the run
        evaluated (its ``--eval-max-images`` sample), in ``per_image.csv``'s order. The test and
        validation images are checked against the digests the run's predictions were stamped
        with: other images than the run's are refused."""
        root = self._data_root(split)
        dataset = ClassFolderDataset(root, self.class_set, split, image_size=self.plan.data.image_size, cache=True)
        evaluation = self.plan.evaluation
        images = ImageSet.sample(dataset, evaluation.max_images, seed=evaluation.seed) if split == "test" \
            else ImageSet.of(dataset)
        stamps = {"test": self.stamp, "val": read_stamp(RunFolder(self.folder).validation)}
        stamp = stamps.get(split)
        if stamp is not None:
            differing = [key for key, value in images.fingerprint.items() if stamp.get(key, value) != value]
            if differing:
                raise RunFolderError(f"the {split} images under {root} are not those run {self.folder.name} evaluated "
                                     f"(their {', '.join(differing)} digest differs); pass data_dir= the run's data")
        return images

    def _data_root(self, split: str) -> Path:
        configured = self.data_dir or self.plan.data.root
        places = [configured] if configured.is_absolute() else [Path.cwd() / configured,
                                                                 self.folder.parent.parent / configured]
        for place in places:
            if (place / self.class_set.name / split).is_dir():
                return place
        raise RunFolderError(f"the run's {split} images are not in {' or '.join(str(p) for p in places)} (expected "
                             f"<data dir>/{self.class_set.name}/{split}/<class>/); pass data_dir= where they are")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist; expected {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); expected {what}") from None
