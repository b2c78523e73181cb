"""The hard pipeline's verdict as the attacks read it: success and the deployed decision."""

from __future__ import annotations

import torch

from unmask.attacks.adaptive import NO_PREDICTION, Verdict


def verdict() -> Verdict:
    # images: fooled & unflagged, fooled & flagged, right & unflagged, right & flagged, flagged with no prediction
    return Verdict(m_prediction=torch.tensor([1, 1, 0, 0, 2]), detection_score=torch.tensor([0.2, 0.6, 0.1, 0.7, 0.9]),
                   flagged=torch.tensor([False, True, False, True, True]),
                   unmask_prediction=torch.tensor([0, 0, 1, 1, NO_PREDICTION]),
                   parts=torch.zeros(5, 44, dtype=torch.bool))


def test_evading_is_m_wrong_and_not_flagged():
    assert verdict().evades(torch.zeros(5, dtype=torch.int64)).tolist() == [True, False, False, False, False]


def test_the_deployed_decision_follows_the_flag():
    assert verdict().deployed.tolist() == [1, 0, 0, 1, NO_PREDICTION]
