import re

import pytest
import torch
from torchvision import models as tv

from unmask.io import CheckpointError
from unmask.models import classifier
from unmask.models.classifier import (
    CLASSIFIER_NAMES,
    InferenceOptions,
    PretrainedWeightsError,
    autocast_dtype,
    build_classifier,
    compile_model,
    imagenet_weights_file,
    predict,
    use_channels_last,
)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torchvision cache on a machine that cannot download."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(classifier, "_try_download", lambda url, file: None)
    return tmp_path / "hub"


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_every_classifier_maps_unit_range_images_of_any_size_to_class_logits(name):
    torch.manual_seed(0)
    model = build_classifier(name, 5).eval()
    with torch.no_grad():
        for size in (40, 150) if name in ("compact", "resnet18") else (40,):
            assert model(torch.rand(2, 3, size, size)).shape == (2, 5)


def test_normalisation_is_the_models_first_layer():
    model = build_classifier("compact", 3).eval()
    images = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(images), model.network((images - mean) / std))
    assert not any(key.startswith("normalize.") for key in model.state_dict())


def test_unknown_name_and_too_few_classes_are_refused():
    with pytest.raises(ValueError, match="unknown classifier 'resnet5'.*compact"):
        build_classifier("resnet5", 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_classifier("compact", 1)


def test_missing_imagenet_weights_name_the_file_and_where_to_put_it(offline_hub, capsys):
    expected = offline_hub / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file("resnet18") == expected
    with pytest.raises(PretrainedWeightsError, match=re.escape(str(expected))) as error:
        build_classifier("resnet18", 3, pretrained=True, allow_random_init=False)
    assert tv.ResNet18_Weights.IMAGENET1K_V1.url in str(error.value)
    model = build_classifier("resnet18", 3, pretrained=True, allow_random_init=True)
    assert model.network.fc.out_features == 3
    # said loudly, on a line of its own: a Python warning may be filtered
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING: ")]
    assert len(lines) == 1 and "M (resnet18) starts from random weights, not the ImageNet weights asked for" in lines[0]
    assert str(expected) in lines[0]


def test_compact_has_no_imagenet_weights(offline_hub):
    with pytest.raises(PretrainedWeightsError, match="compact.*has no ImageNet weights"):
        build_classifier("compact", 3, pretrained=True, allow_random_init=False)


def test_imagenet_weights_come_from_torchvisions_cache(offline_hub):
    torch.manual_seed(1)
    imagenet = tv.resnet18()
    file = imagenet_weights_file("resnet18")
    file.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), file)
    model = build_classifier("resnet18", 4, pretrained=True, allow_random_init=False)
    assert torch.equal(model.network.conv1.weight, imagenet.conv1.weight)
    assert model.network.fc.out_features == 4


def test_densenet_files_with_torchvisions_old_layer_names_load(tmp_path):
    torch.manual_seed(2)
    imagenet = tv.densenet121()
    old_names = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
                 for key, value in imagenet.state_dict().items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_names
    torch.save(old_names, tmp_path / "densenet.pth")
    model = build_classifier("densenet121", 3, pretrained=True, weights_path=tmp_path / "densenet.pth")
    assert torch.equal(model.network.features.denseblock1.denselayer1.conv1.weight,
                       imagenet.features.denseblock1.denselayer1.conv1.weight)


def test_weights_file_of_another_architecture_or_missing_is_explained(tmp_path):
    torch.save(tv.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match="resnet18.pth: not ImageNet weights of resnet50"):
        build_classifier("resnet50", 3, pretrained=True, weights_path=tmp_path / "resnet18.pth")
    torch.save({"epoch": 3, "model": tv.resnet18().state_dict()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt \(given with --weights-path\) is not a weights file of the "
                                              r"expected kind: .*--weights-path expects ImageNet weights of resnet18"):
        build_classifier("resnet18", 3, pretrained=True, weights_path=tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"missing.pth \(given with --weights-path\) does not exist"):
        build_classifier("resnet18", 3, pretrained=True, weights_path=tmp_path / "missing.pth", allow_random_init=True)


def test_predict_batches_and_restores_the_mode():
    model = build_classifier("compact", 3).train()
    images = torch.rand(10, 3, 32, 32)
    predictions = predict(model, images, batch_size=3)
    assert model.training and predictions.dtype == torch.int64
    with torch.no_grad():
        assert torch.equal(predictions, model.eval()(images).argmax(dim=1))


# --- inference precision, memory format, compilation ----------------------------------------------------


def test_autocast_dtype_per_device_and_precision(monkeypatch):
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cpu", "float32") is None
    assert autocast_dtype("cpu", "bfloat16") == torch.bfloat16 and autocast_dtype("cpu", "float16") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype("cuda", "auto") == torch.bfloat16 and autocast_dtype("cuda:1", "float32") is None
    assert InferenceOptions().effective_precision("cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # e.g. a V100 or T4
    assert autocast_dtype("cuda", "auto") == torch.float16
    assert InferenceOptions().effective_precision("cuda") == "float16"
    assert InferenceOptions().effective_precision("cpu") == "float32"
    assert autocast_dtype("mps", "bfloat16") is None
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*auto, float32, bfloat16, float16"):
        autocast_dtype("cpu", "fp8")
    with pytest.raises(ValueError, match="unknown precision"):
        InferenceOptions(precision="half")


def test_bfloat16_predictions_agree_with_float32_except_near_ties():
    torch.manual_seed(0)
    model = build_classifier("compact", 5).train()
    with torch.no_grad():
        model.network[-1].weight.normal_(0, 3.0)  # logits spread like a trained model's, not near uniform
    images = torch.rand(64, 3, 32, 32)
    dtypes = []
    hook = model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    exact = predict(model, images, batch_size=16)
    mixed = predict(model, images, batch_size=16, precision="bfloat16")
    hook.remove()
    assert dtypes == [torch.float32] * 4 + [torch.bfloat16] * 4  # the second ran under CPU autocast
    assert model.training  # the mode is restored
    assert mixed.dtype == torch.int64 and torch.equal(predict(model, images, precision="auto"), exact)
    with torch.no_grad():
        logits = model.eval()(images).sort(dim=1, descending=True).values
    close = (logits[:, 0] - logits[:, 1]) < 0.05 * logits[:, 0].abs().clamp(min=1)  # a near tie
    assert torch.equal(mixed[~close], exact[~close]) and (~close).sum() > 32 and len(exact.unique()) > 1


def test_channels_last_keeps_weights_and_outputs():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        expected = model(images)
    options = InferenceOptions(channels_last=True)
    assert options.prepare(model) is model
    assert model.network.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=1e-4)
    assert predict(use_channels_last(model), images).shape == (2,)


def test_compile_keeps_the_state_dict_keys(monkeypatch):
    model = build_classifier("compact", 3)
    keys = list(model.state_dict())
    called = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: called.append(self))
    assert InferenceOptions(compile=True).prepare(model) is model and called == [model]
    assert InferenceOptions().prepare(model) is model and called == [model]  # off by default
    assert list(model.state_dict()) == keys


@pytest.mark.slow
def test_a_compiled_classifier_predicts_and_backpropagates_as_the_eager_one():
    torch.manual_seed(0)
    eager = build_classifier("compact", 3).eval()
    compiled = build_classifier("compact", 3).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(predict(compiled, images), predict(eager, images))
    gradients = []
    for model in (eager, compiled):
        inputs = images.clone().requires_grad_()
        model(inputs).logsumexp(dim=1).sum().backward()
        gradients.append(inputs.grad)
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-5, rtol=1e-4)
