"""The evaluation of one run as an object: it owns the run's folder, the runtime, the fixed
batches, M, the baseline, K and UnMask-R's robust K (when the run has one) as they run, the
evaluated images, and the key of every result it saves.

``Evaluator.start(...)`` draws the evaluated test sample; then ``clean()`` and ``validation()``
are the clean predictions of the test and validation images, ``thresholds(fpr)`` the detection
thresholds fixed on the latter, and ``gray_box(vectors, options)`` the paper's attacks on M (and
on the baseline), K on every attacked image; ``clean_predictions`` and ``attacked`` also take
another M and K (the pipeline of another defense, UnMask-R's). Each is computed once in batches (sharded over
``torchrun``'s processes, resumable), saved in the run's folder and stamped with its ``key``:
what made it (the images' contents, M's, the baseline's and K's fingerprints, the batch size,
and the computation's own options). The adaptive evaluation (``experiment.adaptive``) saves
its results through the same ``key`` and ``result``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unmask.attacks import AttackOptions, AttackVector
from unmask.data.folders import ClassFolderDataset
from unmask.data.sampling import stratified_sample
from unmask.evaluation import Predictions, Scored, Thresholds, fix_thresholds
from unmask.experiment.batches import Arrays, BatchComputation, resumable_result
from unmask.experiment.folder import RunFolder, choose_example, example_candidates, save_example
from unmask.experiment.plan import EvaluationSpec
from unmask.experiment.stages import TrainedClassifier, TrainedPartExtractor, attacked_predictions, clean_predictions
from unmask.attacks.norms import LINF
from unmask.io import stable_hash
from unmask.models.classifier import ClassifierInference
from unmask.parts import ClassSet
from unmask.provenance import Fingerprint, digest
from unmask.runtime import Runtime
from unmask.train.robust_part_extractor import InnerAttack, InnerGoals, PartExtractorAdversarialTraining

ATTACKED_EVIDENCE = PartExtractorAdversarialTraining(epsilon=8.0, inner_loop="pgd", steps=10, losses=("transplant",))
"""The K-only attack on M's training images whose K outputs the part-classifier rule is also
trained on under ``--part-classifier-data clean+attacked``: PGD with a random start, 10 steps of
2.5 epsilon / 10 at L-inf 8, K's hinges towards a random other class's parts (UnMask-R's
``transplant`` inner loss)."""


@dataclass(frozen=True)
class ImageSet:
    """Evaluated images (N, 3, H, W) in [0, 1] with their labels, and what identifies them: the
    fingerprint of the split's contents and, for a sample of it, of which images were drawn."""

    images: torch.Tensor
    labels: torch.Tensor
    fingerprint: dict[str, str]
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, dataset: ClassFolderDataset, chosen: np.ndarray | None = None) -> ImageSet:
        images, labels = dataset.tensors()
        fingerprint = {"data": dataset.fingerprint()}
        names = tuple(path.name for path, _ in dataset.samples)
        if chosen is not None:
            images, labels = images[chosen], labels[chosen]
            fingerprint["images"] = digest(chosen.tolist())
            names = tuple(names[index] for index in chosen)
        return cls(images, labels, fingerprint, names)

    @classmethod
    def sample(cls, dataset: ClassFolderDataset, count: int, *, seed: int) -> ImageSet:
        """A seeded, class-stratified sample of ``count`` of ``dataset``'s images (0: all of them),
        in the dataset's order: the test images a run with ``--eval-max-images count`` evaluates."""
        return cls.of(dataset, stratified_sample(dataset.labels.numpy(), count, seed=seed))

    def __len__(self) -> int:
        return len(self.labels)


def other_class_goals(labels: torch.Tensor, expected: torch.Tensor, generator: torch.Generator) -> InnerGoals:
    """K's hinge goals towards a class drawn at random among the others of the class set for
    each image (``labels`` (N,) in class-set order; ``expected`` (C, 44) the class set's V):
    add the drawn class's parts, remove every other part."""
    draws = torch.rand(len(labels), len(expected), generator=generator)
    draws[torch.arange(len(labels)), labels] = -1.0  # never the image's own class
    goal = expected[draws.argmax(1)]
    return InnerGoals(("transplant",) * len(labels), goal, 1.0 - goal)


@dataclass
class Evaluator:
    """One run's evaluation (see the module's docstring)."""

    folder: RunFolder
    runtime: Runtime
    spec: EvaluationSpec
    class_set: ClassSet
    m: TrainedClassifier
    adv_trained: TrainedClassifier | None
    k: TrainedPartExtractor
    test: ImageSet
    validation_images: ImageSet
    k_robust: TrainedPartExtractor | None = None
    """UnMask-R's robust K (None: the run has none)."""
    training_data: ClassFolderDataset | None = None
    """M's training split, read only by the part-classifier rule (K's outputs on it train it)."""
    _scored: dict[Path, Scored] = field(default_factory=dict, repr=False)
    _thresholds: dict[float, Thresholds] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, folder: RunFolder, runtime: Runtime, spec: EvaluationSpec, class_set: ClassSet,
              data: dict[str, ClassFolderDataset], m: TrainedClassifier, adv_trained: TrainedClassifier | None,
              k: TrainedPartExtractor, *, k_robust: TrainedPartExtractor | None = None) -> Evaluator:
        """The evaluation of M (and the baseline) and K (and the robust K) on ``data``'s test
        split (a seeded, class-stratified sample of ``spec.max_images`` of it) and validation split."""
        return cls(folder, runtime, spec, class_set, m, adv_trained, k,
                   ImageSet.sample(data["test"], spec.max_images, seed=spec.seed), ImageSet.of(data["val"]),
                   k_robust, data.get("train"))

    @property
    def labels(self) -> np.ndarray:
        """The evaluated test images' labels."""
        return self.test.labels.numpy()

    # --- keys and results ---------------------------------------------------------------------

    def key(self, images: ImageSet | None = None, *, baseline: bool = True, m: TrainedClassifier | None = None,
            k: TrainedPartExtractor | None = None, **computation: Any) -> Fingerprint:
        """What a result computed on ``images`` (default: the test sample) depends on: their
        contents, M's fingerprint (weights and inference settings; or the given M's), the
        baseline's when it took part, K's (or the given K's), the batch size, and
        ``computation`` (its own options)."""
        images = self.test if images is None else images
        return {**images.fingerprint, "m": (m or self.m).fingerprint,
                "adv_trained": self.adv_trained.fingerprint if baseline and self.adv_trained is not None else None,
                "k": (k or self.k).fingerprint, "batch_size": self.spec.batch_size, **computation}

    def result(self, path: Path, key: Fingerprint, count: int, compute: BatchComputation, *, what: str,
               batch_size: int | None = None, finish: Callable[[list[Arrays]], None] | None = None) -> Arrays:
        """The per-image arrays of ``compute`` over ``count`` images in fixed batches: read from
        ``path`` when it was made from ``key``, else computed (sharded, resumable) and saved."""
        return resumable_result(path, key, count=count, batch_size=batch_size or self.spec.batch_size,
                                compute=compute, runtime=self.runtime, what=what, finish=finish)

    def weights_files(self) -> dict[str, str | None]:
        """The file each model's weights were read from (M, the baseline, K), for ``metrics.json``:
        relative to the output folder (``models/<kind>-<hash>/weights.pt``) when inside it, so a
        moved results folder still names them; None for a model the run does not have."""

        def recorded(path: Path | None) -> str | None:
            if path is None:
                return None
            output = self.folder.path.parent.resolve()
            path = path.resolve()
            return path.relative_to(output).as_posix() if path.is_relative_to(output) else str(path)

        return {"m": recorded(self.m.weights_file),
                "adv_trained": recorded(self.adv_trained.weights_file) if self.adv_trained is not None else None,
                "k": recorded(self.k.weights_file),
                "k_robust": recorded(self.k_robust.weights_file) if self.k_robust is not None else None}

    def training_histories(self) -> dict[str, list[dict[str, float]] | None]:
        """Each model's per-epoch training records, by the name the training figure gives it
        (None: not trained by this run's cache, e.g. ``--m-checkpoint``); with ``--m-adv-trained``
        M is the baseline itself, shown once."""
        histories = {"M": self.m.history}
        if self.adv_trained is not None and self.adv_trained is not self.m:
            histories["adversarially trained M (baseline)"] = self.adv_trained.history
        histories["K"] = self.k.history
        if self.k_robust is not None:
            histories["robust K (UnMask-R)"] = self.k_robust.history
        return histories

    def baseline(self) -> ClassifierInference | None:
        """The adversarially trained M as it runs (None without the baseline)."""
        return self.adv_trained.inference if self.adv_trained is not None else None

    # --- the stages ---------------------------------------------------------------------------

    def clean(self) -> Scored:
        """M's, the baseline's and K's predictions on the clean test images, scored."""
        return self.clean_predictions(self.test, self.folder.clean, what="clean test predictions")

    def validation(self) -> Scored:
        """M's and K's predictions on the clean validation images, scored (they fix the thresholds)."""
        return self.clean_predictions(self.validation_images, self.folder.validation, baseline=False,
                                      what="clean validation predictions")

    def clean_predictions(self, images: ImageSet, path: Path, *, baseline: bool = True,
                          m: TrainedClassifier | None = None, k: TrainedPartExtractor | None = None,
                          what: str) -> Scored:
        """Clean predictions of ``images`` by M (or the given M; and the baseline), and by K (or
        the given K)."""
        if path in self._scored:
            return self._scored[path]
        classifier, extractor = (m or self.m).inference, (k or self.k).extractor
        adv_trained = self.baseline() if baseline else None
        arrays = self.result(path, self.key(images, baseline=baseline, m=m, k=k), len(images),
                             lambda number, indices: (clean_predictions(images.images[indices], classifier,
                                                                        adv_trained, extractor).arrays(), {}),
                             what=what)
        self._scored[path] = Scored.of(Predictions.from_arrays(arrays), self.class_set)
        return self._scored[path]

    def training(self, k: TrainedPartExtractor, path: Path, *, what: str) -> tuple[Scored, np.ndarray]:
        """K's (and M's) predictions on M's clean training images, and their labels: what the
        part-classifier rule is trained on (computed only when that rule is deployed)."""
        images = self._training_images()
        return self.clean_predictions(images, path, baseline=False, k=k, what=what), images.labels.numpy()

    def _training_images(self) -> ImageSet:
        if self.training_data is None:
            raise ValueError("the part-classifier rule needs M's training split; this evaluation has none")
        return ImageSet.of(self.training_data)

    def attacked_training(self, k: TrainedPartExtractor, path: Path, *, what: str) -> tuple[Scored, np.ndarray]:
        """K's (and M's) predictions on M's training images after ``ATTACKED_EVIDENCE``'s K-only
        attack towards a random other class of the class set (per image, drawn from the seed and
        the batch), rounded to 8 bits, and the images' own labels."""
        images, extractor = self._training_images(), k.extractor
        attack = InnerAttack(ATTACKED_EVIDENCE, score_threshold=extractor.score_threshold)
        expected = torch.tensor(np.asarray(self.class_set.expected), dtype=torch.float32)

        def compute(number: int, indices: Any) -> tuple[Arrays, dict[str, Any]]:
            generator = torch.Generator().manual_seed(int(stable_hash([self.spec.seed, "attacked-evidence", number],
                                                                      length=15), 16))
            clean = images.images[indices].to(self.runtime.device)
            goals = other_class_goals(images.labels[indices], expected, generator)
            points = attack.perturb(extractor.model, list(clean), None, goals, generator=generator)
            attacked = LINF.quantize(torch.stack(points), clean, attack.epsilon).cpu()
            return clean_predictions(attacked, self.m.inference, None, extractor).arrays(), {}

        key = self.key(images, baseline=False, k=k, attacked_evidence=asdict(ATTACKED_EVIDENCE))
        arrays = self.result(path, key, len(images), compute, what=what)
        return Scored.of(Predictions.from_arrays(arrays), self.class_set), images.labels.numpy()

    def thresholds(self, fpr: float) -> Thresholds:
        """Detection thresholds fixed on the clean validation images at false-positive rate ``fpr``."""
        if fpr not in self._thresholds:
            self._thresholds[fpr] = fix_thresholds(self.validation(), fpr)
        return self._thresholds[fpr]

    def gray_box(self, vectors: tuple[AttackVector, ...], options: AttackOptions) -> dict[AttackVector, Scored]:
        """Every vector's attack on M (and on the baseline, through its own gradients), K on every
        attacked image (the paper's gray-box evaluation); each vector's example image pair is
        saved beside its result, for the figure."""
        return {vector: self.attacked(vector, options) for vector in
                tqdm(vectors, desc="attack vectors", disable=not self.runtime.progress, dynamic_ncols=True)}

    def attacked(self, vector: AttackVector, options: AttackOptions, *, sample: np.ndarray | None = None,
                 path: Path | None = None, what: str | None = None, m: TrainedClassifier | None = None,
                 k: TrainedPartExtractor | None = None) -> Scored:
        """One gray-box vector on the test images (or on positions ``sample`` of them, saved at
        ``path``); against another M and judged by another K when given (then without the
        baseline, which belongs to the run's own pipeline)."""
        clean = self.clean()
        images, labels = self.test.images, self.test.labels
        own = m is None and k is None
        classifier, extractor = (m or self.m).inference, (k or self.k).extractor
        baseline = self.baseline() if own else None
        key = self.key(baseline=own, m=m, k=k, attack={"vector": vector.label, **asdict(options)},
                       seed=self.spec.seed)
        if sample is not None:
            images, labels = images[sample], labels[sample]
            key = {**key, "sample": digest(sample.tolist())}
        classes = labels.numpy()

        def attack_batch(number: int, indices: np.ndarray) -> tuple[Arrays, Arrays]:
            predictions, adversarial = attacked_predictions(
                vector, images[indices], labels[indices], classifier, baseline, extractor,
                options=options, seed=self.spec.seed, batch=number)
            if sample is not None:
                return predictions.arrays(), {}
            positions = example_candidates(classes[indices], clean.subset(indices), Scored.of(predictions,
                                                                                               self.class_set))
            return predictions.arrays(), {"candidates": np.where(positions >= 0, indices[positions.clip(0)], -1),
                                          "adversarial": adversarial[positions.clip(0)].numpy()}

        def save_the_example(extras: list[Arrays]) -> None:
            batch, position = choose_example([batch["candidates"] for batch in extras])
            index = int(extras[batch]["candidates"][position])
            save_example(self.folder.example(vector), index, images[index],
                         torch.from_numpy(extras[batch]["adversarial"][position]))

        arrays = self.result(path or self.folder.vector(vector), key, len(labels), attack_batch,
                             what=what or f"attack {vector.label}", finish=None if sample is not None else save_the_example)
        return Scored.of(Predictions.from_arrays(arrays), self.class_set)
