import foolbox as fb
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from unmask.attacks import (
    GRAY_BOX_ATTACKS,
    NORMS,
    PAPER_VECTORS,
    AttackKind,
    AttackOptions,
    attack,
    build_attack,
)
from unmask.models.classifier import Classifier, CompactCNN, build_classifier, predict
from unmask.parts import UnknownNameError
from unmask.train.classifier import ClassifierTraining, train_classifier

SIZE = 32
vector = GRAY_BOX_ATTACKS.vector
parse_attack_vectors = GRAY_BOX_ATTACKS.parse
SMALL_EPSILON = {"linf": 1, "l2": 20}
LARGE_EPSILON = {"linf": 64, "l2": 1500}


def shapes(count: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes (square, disc, cross) of a random colour at a random place on noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.3
    for index, label in enumerate(labels.tolist()):
        dy, dx = (y - torch.randint(10, SIZE - 10, (1,), generator=generator)), (x - torch.randint(10, SIZE - 10, (1,), generator=generator))
        inside = (dy.abs() <= 6) & (dx.abs() <= 6)
        mask = [inside, dy**2 + dx**2 <= 36, inside & ((dy.abs() <= 1) | (dx.abs() <= 1))][label]
        colour = torch.rand(3, 1, 1, generator=generator) * 0.5 + 0.5
        images[index] = torch.where(mask, colour, images[index])
    return images, labels


@pytest.fixture(scope="module")
def trained():
    """A compact CNN (twice the demo's width, for 32 px) trained on the shapes, and test images it
    classifies correctly."""
    torch.manual_seed(0)
    model = Classifier(CompactCNN(3, width=32), name="compact", num_classes=3)
    train = TensorDataset(*shapes(300, seed=0))
    training = ClassifierTraining(epochs=8, lr=0.05, lr_schedule="cosine")
    model = train_classifier(model, train, TensorDataset(*shapes(60, seed=1)), training, progress=False).model
    images, labels = shapes(60, seed=2)
    correct = predict(model, images) == labels
    assert correct.float().mean() > 0.9
    return model, images[correct][:40], labels[correct][:40]


def perturbation_norm(adversarials: torch.Tensor, images: torch.Tensor, norm: str) -> torch.Tensor:
    difference = (adversarials - images).flatten(1)
    return difference.abs().amax(dim=1) if str(norm) == "linf" else difference.norm(dim=1)


def success_rate(model, adversarials, labels) -> float:
    return (predict(model, adversarials) != labels).float().mean().item()


@pytest.mark.parametrize("name", list(GRAY_BOX_ATTACKS))
def test_attacks_stay_in_the_ball_and_in_unit_range_and_succeed_more_with_larger_epsilon(trained, name):
    model, images, labels = trained
    norm = GRAY_BOX_ATTACKS[name].norm.name
    rates = []
    for epsilon in (SMALL_EPSILON[norm], LARGE_EPSILON[norm]):
        torch.manual_seed(0)
        adversarials = attack(model, images, labels, vector(name, epsilon))
        assert adversarials.shape == images.shape and adversarials.dtype == torch.float32
        assert adversarials.min() >= 0 and adversarials.max() <= 1
        assert perturbation_norm(adversarials, images, norm).max() <= epsilon / 255 * (1 + 1e-5)
        rates.append(success_rate(model, adversarials, labels))
    assert rates[0] < rates[1]
    assert rates[1] >= 0.95


def test_pgd_success_rises_with_epsilon(trained):
    model, images, labels = trained
    torch.manual_seed(0)
    rates = [success_rate(model, attack(model, images, labels, vector("pgd_linf", epsilon)), labels) for epsilon in (1, 4, 16)]
    assert rates[0] < rates[1] < rates[2]


def test_the_papers_eight_vectors_run_through_one_call(trained):
    model, images, labels = trained
    assert [vector.label for vector in PAPER_VECTORS] == [
        "pgd_linf:8", "pgd_linf:16", "pgd_l2:300", "pgd_l2:600", "mim_linf:8", "mim_linf:16", "mim_l2:300", "mim_l2:600"]
    for vector in PAPER_VECTORS:
        adversarials = attack(model, images[:8], labels[:8], vector, AttackOptions(steps=2))
        assert perturbation_norm(adversarials, images[:8], vector.norm).max() <= vector.epsilon / 255 * (1 + 1e-5)


class Quadratic(nn.Module):
    """logits = W ((x - 1/2)^2 + x) for 2x2 single-channel images: gradients easy to follow by hand,
    whose signs flip where a pixel crosses 1/2 (which tells momentum schemes apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 1.0, 2.0, -0.5], [0.3, 0.2, -1.0, 1.0]]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.flatten(1)
        return ((pixels - 0.5) ** 2 + pixels) @ self.weight.T


def l2_norms(batch: torch.Tensor) -> torch.Tensor:
    return batch.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def cross_entropy_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    images = images.clone().requires_grad_()
    nn.functional.cross_entropy(model(images), labels, reduction="sum").backward()
    return images.grad


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mim_follows_dong_et_al_in_a_hand_computed_two_step_example(norm):
    model = Quadratic()
    images = torch.tensor([[[[0.5, 0.49], [0.52, 0.5]]], [[[0.2, 0.51], [0.5, 0.3]]]])
    labels = torch.tensor([2, 0])
    epsilon, decay, step = 30.0, 0.7, 20 / 255  # two steps of 20 overshoot the ball: projection matters

    # by hand: g <- mu g + grad / ||grad||_1; x <- clip(project(x + step * direction(g)))
    expected, accumulated = images.clone(), torch.zeros_like(images)
    for _ in range(2):
        gradient = cross_entropy_gradient(model, expected, labels)
        accumulated = decay * accumulated + gradient / gradient.abs().sum(dim=(1, 2, 3), keepdim=True)
        if norm == "linf":
            expected = expected + step * accumulated.sign()
            expected = images + (expected - images).clamp(-epsilon / 255, epsilon / 255)
        else:
            expected = expected + step * accumulated / l2_norms(accumulated)
            delta = expected - images
            expected = images + delta * (epsilon / 255 / l2_norms(delta)).clamp(max=1)
        expected = expected.clamp(0, 1)

    result = attack(model, images, labels, vector(f"mim_{norm}", epsilon), AttackOptions(steps=2, step_size=20, decay=decay))
    assert torch.allclose(result, expected, atol=1e-6)
    if norm == "linf":  # foolbox's own MI-FGSM accumulates sign(grad): another attack, as the example shows
        foolbox_mim = fb.attacks.LinfMomentumIterativeFastGradientMethod(momentum=decay, abs_stepsize=step, steps=2)
        _, theirs, _ = foolbox_mim(fb.PyTorchModel(model.eval(), bounds=(0, 1)), images, labels, epsilons=epsilon / 255)
        assert not torch.allclose(theirs, expected, atol=1e-6)


def test_fgsm_is_one_signed_step_of_epsilon():
    model = Quadratic()
    images = torch.tensor([[[[0.5, 0.4], [0.6, 0.98]]]])
    labels = torch.tensor([1])
    expected = (images + 8 / 255 * cross_entropy_gradient(model, images, labels).sign()).clamp(0, 1)
    assert torch.allclose(attack(model, images, labels, vector("fgsm", 8)), expected, atol=1e-7)


def test_step_sizes_follow_the_spec():
    steps = 20
    assert build_attack(vector("pgd_linf", 8)).abs_stepsize == pytest.approx(2 / 255)
    assert build_attack(vector("mim_linf", 16)).abs_stepsize == pytest.approx(2 / 255)
    assert build_attack(vector("pgd_l2", 300)).abs_stepsize == pytest.approx(2.5 * 300 / 255 / steps)
    assert build_attack(vector("mim_l2", 600), AttackOptions(steps=10)).abs_stepsize == pytest.approx(2.5 * 600 / 255 / 10)
    for name in ("pgd_linf", "pgd_l2", "mim_linf", "mim_l2"):
        assert build_attack(vector(name, 8), AttackOptions(original_step=True)).abs_stepsize == 2.0
    assert build_attack(vector("pgd_linf", 8)).random_start and build_attack(vector("pgd_l2", 300)).random_start
    assert not build_attack(vector("mim_linf", 8)).random_start and not build_attack(vector("mim_l2", 300)).random_start


def test_one_pgd_step_moves_by_the_step_and_the_original_step_jumps_to_the_ball_edge():
    model = Quadratic()
    images = torch.full((1, 1, 2, 2), 0.5)
    labels = torch.tensor([0])
    direction = cross_entropy_gradient(model, images, labels).sign()
    corrected = attack(model, images, labels, vector("pgd_linf", 8), AttackOptions(steps=1, random_start=False))
    assert torch.allclose(corrected, images + 2 / 255 * direction, atol=1e-7)
    original = attack(model, images, labels, vector("pgd_linf", 8), AttackOptions(steps=1, random_start=False, original_step=True))
    assert torch.allclose(original, images + 8 / 255 * direction, atol=1e-7)


def test_random_starts_are_reproducible_given_a_seed(trained):
    model, images, labels = trained
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(attack(model, images[:6], labels[:6], vector("pgd_linf", 8), AttackOptions(steps=3)))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_batching_does_not_change_a_deterministic_attack(trained):
    model, images, labels = trained
    whole = attack(model, images[:10], labels[:10], vector("bim_linf", 8), AttackOptions(steps=3))
    batched = attack(model, images[:10], labels[:10], vector("bim_linf", 8), AttackOptions(steps=3, batch_size=4))
    assert torch.allclose(whole, batched, atol=1e-6)


def test_the_model_comes_back_as_it_was():
    model = build_classifier("compact", 3).train()
    model.network[1][0].weight.requires_grad_(False)
    flags = [parameter.requires_grad for parameter in model.parameters()]
    attack(model, torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0]), vector("pgd_linf", 8), AttackOptions(steps=2))
    assert model.training and [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())


def test_bad_inputs_are_refused_with_a_clear_message():
    model = Quadratic()
    images = torch.full((2, 1, 2, 2), 0.5)
    with pytest.raises(UnknownNameError, match="unknown attack 'pgd'.*pgd_linf"):
        attack(model, images, torch.tensor([0, 1]), vector("pgd", 8))
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalisation belongs inside the model"):
        attack(model, images * 3, torch.tensor([0, 1]), vector("pgd_linf", 8))
    with pytest.raises(ValueError, match="integer labels"):
        attack(model, images, torch.tensor([0.0, 1.0]), vector("pgd_linf", 8))
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        attack(model, images, torch.tensor([0, 1]), vector("pgd_linf", 0))
    assert attack(model, images, torch.tensor([0, 1], dtype=torch.int32), vector("fgsm", 8)).shape == images.shape


def test_every_registered_attack_describes_itself_and_builds_a_foolbox_attack():
    for name, info in GRAY_BOX_ATTACKS.items():
        assert info.name == name and info.norm in NORMS.values() and info.summary
        assert isinstance(build_attack(vector(name, 8)), fb.attacks.Attack)
    minimising = {name for name, info in GRAY_BOX_ATTACKS.items() if info.kind is AttackKind.MINIMISATION}
    assert minimising == {"cw_l2", "deepfool_linf"}
    assert GRAY_BOX_ATTACKS.choices[0] == "paper" and "pgd_linf" in GRAY_BOX_ATTACKS.describe()


@pytest.mark.parametrize("epsilon", [float("inf"), float("-inf"), float("nan"), 0.0, -1.0])
def test_non_finite_and_non_positive_epsilons_are_refused(epsilon):
    for name in ("pgd_linf", "pgd_l2"):
        with pytest.raises(ValueError, match=f"attack {name}: epsilon must be a finite number > 0"):
            vector(name, epsilon)


def test_epsilons_beyond_the_pixel_range_are_refused():
    assert vector("pgd_linf", 255).epsilon == 255  # the whole range is allowed
    with pytest.raises(ValueError, match="epsilon 1e\\+09 exceeds 255, the whole 0-255 pixel range"):
        parse_attack_vectors(["pgd_linf:1e9"])
    limit = 255 * 3**0.5 * 128  # the L2 distance between an all-black and an all-white 128 px image
    assert parse_attack_vectors([f"pgd_l2:{limit - 1}"], image_size=128)[0].epsilon == limit - 1
    with pytest.raises(ValueError, match=r"attack mim_l2: epsilon 1e\+09 exceeds 56,534, the largest L2 distance "
                                         r"between two 128x128 RGB images"):
        parse_attack_vectors(["pgd_l2:600", "mim_l2:1e9"], image_size=128)
    assert parse_attack_vectors(["mim_l2:1e9"])[0].epsilon == 1e9  # the size is not known here
    with pytest.raises(ValueError, match="pgd_linf:inf.*finite|epsilon must be a finite"):
        parse_attack_vectors(["paper", "pgd_linf:inf"])
