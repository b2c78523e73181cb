"""Options for running at the paper's sizes: K's synthetic image size, inference precision,
channels-last and compile, carried from the configuration into the plan."""

from __future__ import annotations

import pytest

from unmask.cli import parse
from unmask.config import ConfigError, resolve_config
from unmask.experiment import build_plan
from unmask.models.classifier import InferenceOptions


def test_defaults_keep_the_square_world_and_float32_on_the_cpu():
    plan = build_plan(resolve_config())
    assert plan.data.synthetic.k_image_size is None
    assert plan.inference == InferenceOptions(precision="auto", channels_last=False, compile=False)
    assert plan.inference.effective_precision("cpu") == "float32"


def test_the_paper_profile_draws_pascal_sized_k_images_and_runs_m_channels_last():
    plan = build_plan(resolve_config(profile="paper", overrides={"allow_random_init": True}))
    assert plan.data.synthetic.k_image_size == (500, 375) and plan.data.synthetic.image_size == 150
    assert plan.k.architecture == "resnet50-fpn" and plan.inference.channels_last


def test_command_line_options_reach_the_plan():
    plan, _ = parse(["run", "--synthetic-k-image-size", "320x240", "--inference-precision", "bfloat16",
                     "--channels-last", "--compile"])
    assert plan.data.synthetic.k_image_size == (320, 240)
    assert plan.inference == InferenceOptions(precision="bfloat16", channels_last=True, compile=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"synthetic_k_image_size": "500"}, "--synthetic-k-image-size: .*WIDTHxHEIGHT"),
        ({"synthetic_k_image_size": "500x20"}, "too small"),
        ({"inference_precision": "half"}, "--inference-precision: .*auto, float32, bfloat16, float16"),
    ],
)
def test_bad_values_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_plan(resolve_config(overrides=overrides))
