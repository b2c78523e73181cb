"""K's adversarial training (UnMask-R): the inner attack stays in the ball and raises what it
targets, the update's terms, exact resume, and the robust K's own cache folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from unmask.data.coco import PartSegmentationDataset, split_paths
from unmask.io import load_checkpoint
from unmask.models.part_extractor import build_part_extractor
from unmask.parts import CLASS_PARTS, PART_INDEX, PARTS, ClassSet
from unmask.runtime import Runtime
from unmask.train import loop
from unmask.train import robust_part_extractor as robust
from unmask.train.loop import STATE_FILE, WEIGHTS_FILE
from unmask.train.part_extractor import (
    PartExtractorSpec,
    PartExtractorTraining,
    PartExtractorTrainingResult,
    part_extractor_cache_key,
    train_part_extractor,
)
from unmask.train.robust_part_extractor import (
    CLASS_MATRIX,
    AdversarialStep,
    InnerAttack,
    PartExtractorAdversarialTraining,
    part_consistency,
    robust_part_extractor_cache_key,
    train_or_load_robust_part_extractor,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 64  # the shape world's
THRESHOLD = 0.5


def tiny_k(*, sharpen: float = 30.0) -> torch.nn.Module:
    """A randomly initialised lean K whose box classifier is sharpened, so that it detects a
    varied handful of parts with confident scores (K's hinges then have something to push)."""
    torch.manual_seed(0)
    model = build_part_extractor("lean", image_size=SIZE, fpn_channels=16)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(sharpen)
    return model


def training(epochs: int) -> PartExtractorTraining:
    return PartExtractorTraining(epochs=epochs, batch_size=4, lr=0.004, warmup_steps=2, seed=0)


@pytest.fixture(scope="module")
def batch(shape_world: Path) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Four training images and their annotations, one of them saturated (black and white halves:
    the random start and the steps must clamp there)."""
    dataset = PartSegmentationDataset(*split_paths(shape_world, "train"))
    images, targets = zip(*(dataset[index] for index in range(4)), strict=True)
    images = [image.clone() for image in images]
    images[3][:, :, : SIZE // 2], images[3][:, :, SIZE // 2:] = 0.0, 1.0
    return images, list(targets)


def attacked(recipe: PartExtractorAdversarialTraining, batch) -> tuple[InnerAttack, robust.InnerGoals, list]:
    images, targets = batch
    attack = InnerAttack(recipe, score_threshold=THRESHOLD)
    generator = torch.Generator().manual_seed(0)
    goals = attack.goals(targets, len(images), batch=0, generator=generator)
    return attack, goals, attack.perturb(tiny_k(), images, targets, goals, generator=generator)


@pytest.mark.parametrize("inner_loop", ["pgd", "fgsm"])
def test_the_inner_attack_stays_in_the_ball_and_in_the_unit_range(batch, inner_loop: str) -> None:
    recipe = PartExtractorAdversarialTraining(epsilon=8, inner_loop=inner_loop, steps=2,
                                              losses=("training", "vanish", "transplant"))
    _, goals, adversarial = attacked(recipe, batch)
    assert goals.kinds == ("training", "vanish", "transplant", "training")
    epsilon = 8 / 255
    for image, point in zip(batch[0], adversarial, strict=True):
        assert point.shape == image.shape and not point.requires_grad
        assert (point - image).abs().max() <= epsilon + 1e-6
        assert point.min() >= 0 and point.max() <= 1
        assert (point - image).abs().max() > epsilon / 2  # it moved: the steps are not lost


@pytest.mark.parametrize("loss", ["training", "vanish", "transplant"])
def test_the_inner_attack_raises_the_loss_it_targets(batch, loss: str) -> None:
    """The adversarial images' inner objective (K's training losses; minus K's hinges) is above
    the clean images' (the same proposals' sampling for the training losses)."""
    recipe = PartExtractorAdversarialTraining(epsilon=8, inner_loop="pgd", steps=3, losses=(loss,))
    attack, goals, adversarial = attacked(recipe, batch)
    images, targets = batch
    model = tiny_k().eval()
    values = []
    for x in (images, adversarial):
        torch.manual_seed(1)
        with torch.no_grad():
            values.append(attack.objective(model, x, targets, goals).item())
    clean, attacked_value = values
    assert attacked_value > clean + 0.05 * abs(clean), (clean, attacked_value)


def test_goals_assign_the_losses_in_turn_and_transplant_towards_another_class(batch) -> None:
    images, targets = batch
    recipe = PartExtractorAdversarialTraining(losses=("vanish", "transplant"))
    attack = InnerAttack(recipe, score_threshold=THRESHOLD)
    goals = attack.goals(targets, 4, batch=1, generator=torch.Generator().manual_seed(0))
    assert goals.kinds == ("transplant", "vanish", "transplant", "vanish")  # batch 1 starts at the second loss
    assert goals.remove[1].sum() == len(PARTS) and goals.add[1].sum() == 0  # vanish: every part, nothing added
    for row in (0, 2):  # transplant: V[t] added, every other part removed, t not the image's best match
        assert torch.equal(goals.add[row] + goals.remove[row], torch.ones(len(PARTS)))
        assert any(torch.equal(goals.add[row], class_row) for class_row in CLASS_MATRIX)
    # an image annotated with a dog's parts is never pushed towards a dog's parts
    dog = torch.tensor([PART_INDEX[part] + 1 for part in CLASS_PARTS["dog"]])
    dog_row = list(CLASS_PARTS).index("dog")
    for target in ("random", "nearest", "farthest"):
        choose = InnerAttack(replace(recipe, transplant_target=target), score_threshold=THRESHOLD)
        picks = {choose.transplant_target(dog, torch.Generator().manual_seed(seed)) for seed in range(20)}
        assert dog_row not in picks
        if target != "random":
            assert len(picks) == 1
    nearest = InnerAttack(replace(recipe, transplant_target="nearest"), score_threshold=THRESHOLD)
    farthest = InnerAttack(replace(recipe, transplant_target="farthest"), score_threshold=THRESHOLD)
    generator = torch.Generator()
    assert list(CLASS_PARTS)[nearest.transplant_target(dog, generator)] in {"cat", "cow", "horse", "sheep"}
    assert set(CLASS_PARTS[list(CLASS_PARTS)[farthest.transplant_target(dog, generator)]]).isdisjoint(
        CLASS_PARTS["dog"])


def test_the_consistency_is_zero_for_the_clean_image_and_positive_for_another(batch) -> None:
    images, _ = batch
    model = tiny_k().train()
    same = part_consistency(model, images, [image.clone() for image in images], score_threshold=THRESHOLD)
    assert same.item() == pytest.approx(0.0, abs=1e-5)  # the clean proposals' rows line up with themselves
    noisy = [(image + 0.1 * torch.randn_like(image)).clamp(0, 1) for image in images]
    other = part_consistency(model, images, noisy, score_threshold=THRESHOLD)
    assert other.item() > 1e-3 and other.requires_grad
    assert model.training  # the mode it had is restored
    # the same KL computed by hand: K's box head on the clean image's proposals, for both images
    model.eval()
    with torch.no_grad():
        def box_logits(x: list[torch.Tensor], proposals: list[torch.Tensor] | None = None):
            image_list, _ = model.transform(x)
            features = model.backbone(image_list.tensors)
            if proposals is None:
                proposals, _ = model.rpn(image_list, features)
            heads = model.roi_heads
            pooled = heads.box_roi_pool(features, proposals, image_list.image_sizes)
            return heads.box_predictor(heads.box_head(pooled))[0], proposals

        clean_logits, proposals = box_logits(images)
        noisy_logits, _ = box_logits(noisy, proposals)
    log_p, log_q = clean_logits.log_softmax(-1), noisy_logits.log_softmax(-1)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    assert other.item() == pytest.approx(expected.item(), rel=1e-4)


def test_recipes_are_checked() -> None:
    with pytest.raises(ValueError, match="free replays .* need losses"):
        PartExtractorAdversarialTraining(inner_loop="free", losses=("vanish",))
    with pytest.raises(ValueError, match="clean images only"):
        PartExtractorAdversarialTraining(clean_weight=1.0)
    with pytest.raises(ValueError, match="losses must be"):
        PartExtractorAdversarialTraining(losses=("nope",))
    assert PartExtractorAdversarialTraining(inner_loop="fgsm", epsilon=8).step == 10.0  # Wong et al.'s 1.25 eps
    assert PartExtractorAdversarialTraining(inner_loop="pgd", steps=4, epsilon=8).step == 5.0
    assert PartExtractorAdversarialTraining(inner_loop="free", steps=4, losses=("training",)).replays == 4


ALL_TERMS = PartExtractorAdversarialTraining(epsilon=8, inner_loop="pgd", steps=2,
                                             losses=("training", "vanish", "transplant"), clean_weight=0.5,
                                             trades=1.0, epochs=2, warmup_steps=2, val_images=4, val_steps=1)
"""A recipe with every inner loss and every term of the update."""


def fine_tune(train_set, val_set, recipe, folder: Path | None) -> PartExtractorTrainingResult:
    return train_part_extractor(tiny_k(), train_set, val_set, replace(training(recipe.epochs), lr=recipe.lr,
                                                                      warmup_steps=recipe.warmup_steps),
                                checkpoint_dir=folder, progress=False, score_threshold=THRESHOLD,
                                step=AdversarialStep(recipe, score_threshold=THRESHOLD, seed=0))


def test_an_adversarial_fine_tune_resumes_exactly(shape_world: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    train_set = Subset(PartSegmentationDataset(*split_paths(shape_world, "train"), hflip_prob=0.5), range(8))
    val_set = PartSegmentationDataset(*split_paths(shape_world, "test"))
    straight = fine_tune(train_set, val_set, ALL_TERMS, tmp_path / "straight")
    assert len(straight.step_losses) == 2 * 2 and all(torch.isfinite(torch.tensor(straight.step_losses)))
    for record in straight.history:
        assert {"clean_loss", "consistency", "loss_classifier", "val_part_recall"} <= set(record)
        assert 0.0 <= record["val_vanish_part_recall"] <= 1.0

    def write_then_crash(*args, **kwargs) -> None:
        raise KeyboardInterrupt  # the run dies right after its first epoch's checkpoint

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "atomic_write_json", write_then_crash)
        with pytest.raises(KeyboardInterrupt):
            fine_tune(train_set, val_set, ALL_TERMS, interrupted)
    assert load_checkpoint(interrupted / STATE_FILE)["epoch"] == 1
    torch.manual_seed(123)  # the resumed run must not depend on the RNG it starts with
    resumed = fine_tune(train_set, val_set, ALL_TERMS, interrupted)
    assert resumed.resumed_epochs == 1
    assert resumed.step_losses == straight.step_losses[2:]  # the same attacks and updates, exactly
    for again, record in zip(resumed.history, straight.history, strict=True):
        assert {**again, "seconds": 0} == {**record, "seconds": 0}  # losses and validation figures too
    final, again = loop.load_weights(straight.weights_path)[0], loop.load_weights(resumed.weights_path)[0]
    for key, value in final.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)
    with pytest.raises(Exception, match="other settings"):  # another recipe does not resume this training
        fine_tune(train_set, val_set, replace(ALL_TERMS, epsilon=4, epochs=3), interrupted)


def test_free_replays_step_the_optimiser_once_per_replay(shape_world: Path) -> None:
    train_set = Subset(PartSegmentationDataset(*split_paths(shape_world, "train")), range(8))
    recipe = PartExtractorAdversarialTraining(inner_loop="free", steps=3, losses=("training",), epochs=1,
                                              warmup_steps=0, val_images=0)
    result = fine_tune(train_set, None, recipe, None)
    assert len(result.step_losses) == 2 * 3  # two batches, three replays each
    assert len(set(result.step_losses)) == 6  # each replay a new perturbation (and new weights)


def test_the_robust_k_has_its_own_cache_folder(shape_world: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PartExtractorSpec("lean", SIZE, training(1))
    recipe = PartExtractorAdversarialTraining(epsilon=8, losses=("vanish", "transplant"), epochs=1, warmup_steps=0,
                                              val_images=2, val_steps=1)
    monkeypatch.setattr(PartExtractorSpec, "build", lambda self, **kwargs: tiny_k())
    start = tiny_k().state_dict()
    cache = loop.ModelCache(tmp_path, Runtime.start("cpu", verbosity=0))
    train_set = Subset(PartSegmentationDataset(*split_paths(shape_world, "train")), range(8))
    val_set = PartSegmentationDataset(*split_paths(shape_world, "test"))

    def build(recipe: PartExtractorAdversarialTraining):
        return train_or_load_robust_part_extractor(spec, recipe, start=start, train_set=lambda: train_set,
                                                   val_set=lambda: val_set, data_fingerprint="data", cache=cache)

    model, folder = build(recipe)
    assert folder.name.startswith("k-adv-") and folder.name != part_extractor_cache_key(spec, "data")
    weights, metadata = loop.load_weights(folder / WEIGHTS_FILE)
    assert metadata["adversarial"]["epsilon"] == 8 and metadata["architecture"] == "lean"
    assert any(not torch.equal(weights[key], value) for key, value in start.items())  # it was fine-tuned
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value)
    assert "val_vanish_part_recall" in loop.read_history(folder)[0]

    monkeypatch.setattr(robust, "train_part_extractor", lambda *args, **kwargs: pytest.fail("trained again"))
    assert build(recipe)[1] == folder  # a finished robust K is reused

    def key(**changes) -> str:
        return robust_part_extractor_cache_key(changes.pop("spec", spec), replace(recipe, **changes.pop("recipe", {})),
                                               start_weights=changes.pop("start", "clean"),
                                               data_fingerprint=changes.pop("data", "data"))

    base = key()
    assert base == key() and base.startswith("k-adv-")
    for changed in (key(recipe={"epsilon": 4}), key(recipe={"inner_loop": "pgd"}), key(recipe={"trades": 1.0}),
                    key(recipe={"keep": "reclassify"}), key(start="another clean K"), key(data="other data"),
                    key(spec=replace(spec, rule=replace(spec.rule, score_threshold=0.7)))):
        assert changed != base


def test_the_stage_fine_tunes_the_clean_k_and_stamps_the_robust_one(shape_world: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from unmask.experiment.plan import DataSpec
    from unmask.experiment.stages import trained_part_extractor, trained_robust_part_extractor

    data = DataSpec("synthetic", shape_world, ClassSet.named("cs3-1"), SIZE, None)
    monkeypatch.setattr(PartExtractorSpec, "build", lambda self, **kwargs: tiny_k())
    spec = PartExtractorSpec("lean", SIZE, training(1))
    recipe = PartExtractorAdversarialTraining(epsilon=8, epochs=1, warmup_steps=0, val_images=2, val_steps=1)
    cache = loop.ModelCache(tmp_path / "models", Runtime.start("cpu", verbosity=0))
    robust_k = trained_robust_part_extractor(spec, recipe, data, cache)  # trains the clean K first
    clean_k = trained_part_extractor(spec, data, cache)
    assert clean_k.directory.name.startswith("k-") and robust_k.directory.name.startswith("k-adv-")
    assert robust_k.fingerprint["weights"] != clean_k.fingerprint["weights"]
    assert robust_k.fingerprint["rule"] == clean_k.fingerprint["rule"]
    assert robust_k.weights_file == robust_k.directory / WEIGHTS_FILE and robust_k.history[0]["epoch"] == 1
    assert "val_vanish_part_recall" in robust_k.history[0]
    from unmask.experiment.outputs import robust_training_record

    record = robust_training_record(robust_k)  # metrics.json's k_robust.training
    assert record is not None and record["kept_epoch"] == 1 and [r["epoch"] for r in record["epochs"]] == [1]
    assert {"loss", "val_reclassify_accuracy", "val_clean_reclassify_accuracy", "seconds"} <= set(record["epochs"][0])
    assert robust_training_record(None) is None
    monkeypatch.setattr(robust, "train_part_extractor", lambda *args, **kwargs: pytest.fail("trained again"))
    again = trained_robust_part_extractor(spec, recipe, data, cache)
    assert again.fingerprint == robust_k.fingerprint


def test_reclassification_is_judged_against_the_annotated_parts_best_classes() -> None:
    classes = list(CLASS_PARTS)
    bird, cat = CLASS_MATRIX[classes.index("bird")], CLASS_MATRIX[classes.index("cat")]
    annotated = torch.stack([bird, bird, cat])
    predicted = torch.stack([bird, cat, torch.zeros(len(PARTS))])
    judged = robust.reclassified_correctly(predicted, annotated)
    # K's parts are a bird's; a cat's; none at all (the first class, which is not a cat)
    assert judged.tolist() == [True, False, classes[0] == "cat"]
    # a tie among the annotation's best classes: re-classifying as either one is right
    both = torch.zeros(1, len(PARTS))
    both[0, [PART_INDEX[part] for part in set(CLASS_PARTS["bird"]) & set(CLASS_PARTS["cat"])]] = 1.0
    reference = robust.soft_jaccard(both, CLASS_MATRIX)[0]
    best = (reference == reference.max()).nonzero().flatten().tolist()
    for row in best:
        assert robust.reclassified_correctly(CLASS_MATRIX[row][None], both).item()


def test_reclassify_accuracy_under_a_sub_grey_level_attack_is_the_clean_one(shape_world: Path) -> None:
    val_set = PartSegmentationDataset(*split_paths(shape_world, "test"))
    model = tiny_k()
    # every perturbation within 0.4 of a grey level rounds back to the clean image (8-bit judging)
    tiny = robust.reclassify_accuracy(model, val_set, epsilon=0.4, steps=2, images=6, score_threshold=THRESHOLD)
    assert set(tiny) == {"val_clean_reclassify_accuracy", "val_reclassify_accuracy"}
    assert tiny["val_reclassify_accuracy"] == tiny["val_clean_reclassify_accuracy"]
    large = robust.reclassify_accuracy(model, val_set, epsilon=64, steps=2, images=6, score_threshold=THRESHOLD)
    assert large["val_clean_reclassify_accuracy"] == tiny["val_clean_reclassify_accuracy"]
    assert 0.0 <= large["val_reclassify_accuracy"] <= 1.0


@pytest.mark.parametrize("keep, kept", [("reclassify", 2), ("last", 3)])
def test_the_fine_tune_keeps_the_epoch_its_recipe_names(shape_world: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, keep: str, kept: int) -> None:
    scripted = iter([0.5, 0.9, 0.7])  # epoch 2 re-classifies best under attack
    monkeypatch.setattr(robust, "reclassify_accuracy",
                        lambda *args, **kwargs: {"val_reclassify_accuracy": next(scripted)})
    monkeypatch.setattr(robust, "vanish_part_recall", lambda *args, **kwargs: {})
    train_set = Subset(PartSegmentationDataset(*split_paths(shape_world, "train")), range(8))
    val_set = PartSegmentationDataset(*split_paths(shape_world, "test"))
    recipe = PartExtractorAdversarialTraining(epsilon=8, epochs=3, warmup_steps=0, val_images=2, val_steps=1,
                                              keep=keep)
    folder = tmp_path / keep
    result = fine_tune(train_set, val_set, recipe, folder)
    assert [record["val_reclassify_accuracy"] for record in result.history] == [0.5, 0.9, 0.7]
    assert json.loads((folder / loop.HISTORY_FILE).read_text())["kept_epoch"] == kept
    kept_weights = loop.load_weights(folder / WEIGHTS_FILE)[0]
    last = load_checkpoint(folder / STATE_FILE)["model"]
    differs = any(not torch.equal(kept_weights[key], value) for key, value in last.items())
    assert differs == (kept != 3)


def test_keep_is_left_out_of_the_record_at_its_default() -> None:
    recipe = PartExtractorAdversarialTraining()
    assert "keep" not in robust.recipe_record(recipe)
    assert robust.recipe_record(replace(recipe, keep="reclassify"))["keep"] == "reclassify"
    with pytest.raises(ValueError, match="keep must be one of"):
        PartExtractorAdversarialTraining(keep="best")
    with pytest.raises(ValueError, match="val_images must be at least 1"):
        PartExtractorAdversarialTraining(keep="reclassify", val_images=0)
