"""Importing the original's released M: a torchvision model pickled whole with torch.save(model),
trained on un-normalised [0, 1] images with ImageFolder's alphabetical labels."""

import hashlib
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv

from unmask.cli import check_user_checkpoints, main, parse
from unmask.io import CheckpointError
from unmask.models.classifier import IMAGENET_MEAN, IMAGENET_STD
from unmask.parts import ClassSet
from unmask.train.classifier import (
    ClassifierSpec,
    ClassifierTraining,
    import_original_classifier,
    load_trained_classifier,
)
from unmask.train.loop import load_weights, save_weights

CS3_2 = ClassSet.named("cs3-2").classes  # person, dog, bird: ImageFolder's labels are bird, dog, person
CS5_2 = ClassSet.named("cs5-2").classes  # dog, car, bird, train, person


def _spec(architecture: str, classes: tuple[str, ...], image_size: int = 150) -> ClassifierSpec:
    return ClassifierSpec(architecture, classes, image_size, ClassifierTraining())


def _images(count: int, size: int) -> torch.Tensor:
    """Un-normalised [0, 1] images on the 8-bit grid, as the data loader makes them."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator) / 255


def _original_resnet(builder, num_classes: int, images: torch.Tensor) -> nn.Module:
    """A random-init torchvision ResNet with the original's replaced head, in eval mode. BatchNorm's
    running statistics are randomised (the import must carry them), and the head is centred on
    ``images``' features: a random network otherwise predicts one class for every image, and the
    label order would not show in its predictions."""
    torch.manual_seed(0)
    network = builder(weights=None)
    network.fc = nn.Linear(network.fc.in_features, num_classes)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    network.eval()
    features = []
    handle = network.fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    with torch.no_grad():
        network(images)
        handle.remove()
        network.fc.weight.mul_(100)
        network.fc.bias.copy_(-(network.fc.weight @ features[0].mean(dim=0)))
    return network


def _save(network: nn.Module, path: Path, how: str) -> Path:
    """``network`` saved as the original did (``whole``), inside DataParallel, or as a state dict."""
    saved = {"whole": network, "data-parallel": nn.DataParallel(network), "state-dict": network.state_dict()}[how]
    torch.save(saved, path)
    return path


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


# --- (a) a small torchvision model imports and predicts exactly as the pickle it came from ----------------


@pytest.mark.parametrize("how", ["whole", "data-parallel", "state-dict"])
def test_an_imported_model_gives_the_originals_logits_in_the_class_sets_order(tmp_path, how):
    images = _images(6, 64)
    original = _original_resnet(tv.resnet18, len(CS3_2), images)
    source = _save(original, tmp_path / "original.pt", how)
    spec = _spec("resnet18", CS3_2)

    import_original_classifier(source, tmp_path / "imported.pt", spec)
    imported = load_trained_classifier(tmp_path / "imported.pt", spec)

    expected = _logits(original, images)  # the original saw un-normalised images; label i is sorted(classes)[i]
    alphabetical = sorted(CS3_2)
    columns = [alphabetical.index(name) for name in CS3_2]
    assert columns == [2, 1, 0]
    got = _logits(imported, images)
    assert torch.allclose(got, expected[:, columns], rtol=1e-5, atol=1e-4)
    assert torch.equal(got.argmax(dim=1), expected[:, columns].argmax(dim=1))
    # the label order and the missing normalisation both matter to these images
    assert not torch.allclose(got, expected, rtol=1e-3, atol=1e-2)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert not torch.allclose(got, _logits(original, (images - mean) / std)[:, columns], rtol=1e-3, atol=1e-2)
    # some image is predicted as a class whose label the reorder moves (all but dog's)
    assert any(alphabetical[label] != "dog" for label in expected.argmax(dim=1).tolist())


def test_the_imported_file_records_what_it_is_and_where_it_came_from(tmp_path):
    images = _images(2, 64)
    source = _save(_original_resnet(tv.resnet18, len(CS5_2), images), tmp_path / "original.pt", "whole")
    import_original_classifier(source, tmp_path / "imported.pt", _spec("resnet18", CS5_2))
    weights, metadata = load_weights(tmp_path / "imported.pt")
    assert metadata == {"model": "classifier", "architecture": "resnet18", "classes": list(CS5_2), "image_size": 150,
                        "input_normalization": "none",
                        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert all(key.startswith("network.") for key in weights)
    # the file is this project's weights format: other class orders and image sizes are refused
    with pytest.raises(CheckpointError, match="holds weights for another model: classes"):
        load_trained_classifier(tmp_path / "imported.pt", _spec("resnet18", tuple(sorted(CS5_2))))
    with pytest.raises(CheckpointError, match=r"image_size 150 \(this run: 128\)"):
        load_trained_classifier(tmp_path / "imported.pt", _spec("resnet18", CS5_2, image_size=128))


def test_weights_files_without_the_field_keep_imagenet_normalisation_and_unknown_values_are_refused(tmp_path):
    from unmask.models.classifier import build_classifier

    spec = _spec("compact", CS3_2, image_size=64)
    torch.manual_seed(0)
    trained = build_classifier("compact", 3)
    save_weights(tmp_path / "weights.pt", trained, spec.metadata)
    loaded = load_trained_classifier(tmp_path / "weights.pt", spec)
    images = _images(3, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = _logits(loaded.network, (images - mean) / std)
    assert torch.allclose(_logits(loaded, images), normalised, atol=1e-6)
    assert not torch.allclose(_logits(loaded.network, images), normalised, atol=1e-3)

    save_weights(tmp_path / "odd.pt", trained, {**spec.metadata, "input_normalization": "cifar"})
    with pytest.raises(CheckpointError, match=r"odd.pt records input_normalization 'cifar'; expected one of: "
                                              r"imagenet, none"):
        load_trained_classifier(tmp_path / "odd.pt", spec)


# --- (b) the done-when: the original's ResNet-50 with a 5-way head, through the command line --------------


def test_a_pickled_resnet50_imports_and_predicts_the_same_classes_through_m_checkpoint(tmp_path, capsys):
    images = _images(6, 150)
    original = _original_resnet(tv.resnet50, 5, images)
    assert isinstance(original.fc, nn.Linear) and original.fc.in_features == 2048
    source = _save(original, tmp_path / "m-original-pickle.pt", "whole")
    imported_file = tmp_path / "imported" / "m-original.pt"

    assert main(["import-m", "--original-m", str(source), "--imported-m", str(imported_file), "--model", "resnet50",
                 "--class-set", "cs5-2"]) == 0
    assert (f"use it with: python main.py --m-checkpoint {imported_file} --model resnet50 --class-set cs5-2 "
            "--image-size 150") in capsys.readouterr().out

    # what `python main.py --m-checkpoint <file> ...` does with it: check it before any work, then load it
    _, plan, _ = parse(["--m-checkpoint", str(imported_file), "--model", "resnet50", "--class-set", "cs5-2",
                     "--image-size", "150"])
    check_user_checkpoints(plan)
    imported = load_trained_classifier(plan.m_checkpoint, plan.m)

    original_labels = _logits(original, images).argmax(dim=1).tolist()
    imported_labels = _logits(imported, images).argmax(dim=1).tolist()
    alphabetical = ("bird", "car", "dog", "person", "train")  # ImageFolder's order of cs5-2's folders
    assert [alphabetical[label] for label in original_labels] == [CS5_2[label] for label in imported_labels]
    assert original_labels != imported_labels  # the reorder shows in these images' predictions

    # recorded at the original's 150 px: a run at another size is refused
    _, plan, _ = parse(["--m-checkpoint", str(imported_file), "--model", "resnet50", "--class-set", "cs5-2"])
    with pytest.raises(CheckpointError, match=r"image_size 150 \(this run: 128\)"):
        load_trained_classifier(plan.m_checkpoint, plan.m)


def test_import_m_without_a_file_or_for_a_model_torchvision_does_not_have_ends_in_one_error_line(tmp_path, capsys):
    assert main(["import-m", "--verbosity", "0"]) == 1
    assert capsys.readouterr().err.strip() == ("error: import-m needs --original-m FILE: the original's M, saved "
                                               "with torch.save(model)")
    source = tmp_path / "original.pt"
    torch.save(tv.resnet18(num_classes=5), source)
    assert main(["import-m", "--original-m", str(source), "--model", "compact", "--output-dir", str(tmp_path),
                 "--verbosity", "0"]) == 1
    assert "error: the original's M is a torchvision model; --model compact is not one of: resnet18, resnet50" in (
        capsys.readouterr().err)
    # without --imported-m the file goes to <output-dir>/imported/
    assert main(["import-m", "--original-m", str(source), "--model", "resnet18", "--output-dir", str(tmp_path),
                 "--verbosity", "0"]) == 0
    assert (tmp_path / "imported" / "m-resnet18-cs5-2.pt").is_file()


# --- (c) a pickle that would run code is refused, and nothing of it runs -----------------------------------


class _ShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _PythonCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _model_carrying(payload: object) -> nn.Module:
    """A model of allowed classes with a payload among its attributes, as a tampered file would be."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    model.extra = payload
    return model


@pytest.mark.parametrize(("make", "refused"), [
    (_ShellCommand, "posix.system"),
    (_PythonCode, "exec"),
    (lambda marker: _model_carrying(_PythonCode(marker)), "exec"),
])
def test_a_pickle_that_would_run_code_is_refused_naming_it_and_nothing_runs(tmp_path, make, refused):
    marker, source = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save(make(marker), source)
    with pytest.raises(CheckpointError) as error:
        import_original_classifier(source, tmp_path / "imported.pt", _spec("resnet18", CS5_2))
    assert str(error.value).startswith(f"{source} (given with --original-m) is not a weights file of the expected "
                                       f"kind: it holds Python objects ({refused}) that only a full unpickle")
    assert "weights_only=False" not in str(error.value)
    assert not marker.exists() and not (tmp_path / "imported.pt").exists()
    # the file is truly malicious: a full unpickle (never done by the project) runs its code
    torch.load(source, weights_only=False)
    assert marker.exists()


def test_classes_outside_the_allow_list_are_refused_even_from_torch(tmp_path):
    source = tmp_path / "gelu.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU()), source)
    with pytest.raises(CheckpointError, match=re.escape("it holds Python objects (torch.nn.modules.activation.GELU)")):
        import_original_classifier(source, tmp_path / "imported.pt", _spec("resnet18", CS5_2))


# --- (d) a model of another architecture or class count ------------------------------------------------


def test_a_model_of_another_architecture_or_class_count_is_refused_saying_which(tmp_path):
    source = tmp_path / "resnet18-5.pt"
    torch.save(tv.resnet18(num_classes=5).eval(), source)
    destination = tmp_path / "imported.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {source} does not fit this model (ResNet): ")
                       + ".*missing keys.*another architecture or number of classes"):
        import_original_classifier(source, destination, _spec("resnet50", CS5_2))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{source} (given with --original-m) holds a torchvision.models.resnet.ResNet, not the DenseNet of this "
            "run's --model")):
        import_original_classifier(source, destination, _spec("densenet121", CS5_2))
    with pytest.raises(CheckpointError, match=re.escape(
            f"{source}: the model's head (fc) has 5 outputs, but this run's class set has 3 classes "
            "(person, dog, bird)")):
        import_original_classifier(source, destination, _spec("resnet18", CS3_2))
    assert not destination.exists()


# --- (e) a file that is not a torch pickle ----------------------------------------------------------------


def test_files_that_are_not_the_originals_pickle_give_one_clear_error(tmp_path):
    text, empty, truncated, legacy = (tmp_path / name for name in ("notes.pt", "empty.pt", "cut.pt", "legacy.pt"))
    text.write_text("the original's M is on the other disk")
    empty.write_bytes(b"")
    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)), whole)
    assert zipfile.is_zipfile(whole)
    truncated.write_bytes(whole.read_bytes()[:200])
    torch.save(tv.resnet18(num_classes=5), legacy, _use_new_zipfile_serialization=False)
    cases = {
        text: "it is not a torch file", empty: "it is not a torch file (EOFError)",
        truncated: "PytorchStreamReader failed reading zip archive",
        legacy: "it holds whole pickled modules in torch's legacy format (torch.save before torch 1.6)",
    }
    for path, problem in cases.items():
        with pytest.raises(CheckpointError) as error:
            import_original_classifier(path, tmp_path / "imported.pt", _spec("resnet18", CS5_2))
        message = str(error.value)
        assert message.startswith(f"{path} (given with --original-m) is not a weights file of the expected kind: "
                                  f"{problem}"), message
        assert "--original-m expects the original's M as torch.save(model) wrote it" in message
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'none.pt'} (given with "
                                                        "--original-m) does not exist")):
        import_original_classifier(tmp_path / "none.pt", tmp_path / "imported.pt", _spec("resnet18", CS5_2))
    assert not (tmp_path / "imported.pt").exists()
