"""The one training loop: kept epoch, exact resume with every RNG, refused settings, files."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from torch import nn

from unmask.io import CheckpointError, load_checkpoint
from unmask.runtime import Distributed
from unmask.train import loop
from unmask.train.loop import HISTORY_FILE, STATE_FILE, WEIGHTS_FILE, fit, load_model_weights, load_weights

INPUTS = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
TARGETS = INPUTS @ torch.tensor([[1.0], [-2.0], [0.5]])


def run(checkpoint_dir, *, epochs=4, score=None, settings=None, scores=(0.1, 0.4, 0.3, 0.2)):
    """A noisy linear regression whose epochs draw from the global RNG (as augmentation does),
    and a scheduler, so that a resume which missed any state would drift."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    def run_epoch(epoch):
        noisy = INPUTS + 0.1 * torch.randn_like(INPUTS)
        loss = nn.functional.mse_loss(model(noisy), TARGETS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        return {"loss": loss.item(), "score": scores[epoch - 1]}

    result = fit(model, epochs=epochs, run_epoch=run_epoch, optimizer=optimizer, scheduler=scheduler,
                 settings=settings or {"lr": 0.1}, distributed=Distributed(), checkpoint_dir=checkpoint_dir, score=score)
    return model, result


def test_interrupted_training_resumes_exactly_with_every_rng(tmp_path, monkeypatch):
    straight, straight_result = run(tmp_path / "straight")
    original, calls = loop.atomic_write_json, []

    def crash_after_two_epochs(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "atomic_write_json", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed" / STATE_FILE)["epoch"] == 2
    torch.manual_seed(123)  # the resumed run must not depend on the RNG it starts with
    resumed, resumed_result = run(tmp_path / "resumed")
    assert resumed_result.resumed_epochs == 2
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    assert [r["loss"] for r in straight_result.history] == [r["loss"] for r in resumed_result.history]


def test_the_kept_epoch_is_the_best_scoring_or_the_last(tmp_path):
    _, last = run(tmp_path / "last")
    assert last.kept_epoch == 4
    model, best = run(tmp_path / "best", score="score")
    assert best.kept_epoch == 2 and best.kept["score"] == 0.4
    kept = load_weights(tmp_path / "best" / WEIGHTS_FILE)[0]
    assert torch.equal(model.weight, kept["weight"])  # the model comes back with the kept weights
    assert json.loads((tmp_path / "best" / HISTORY_FILE).read_text())["kept_epoch"] == 2
    in_memory, result = run(None, score="score")
    assert result.weights_path is None and torch.equal(in_memory.weight, model.weight)


def test_a_finished_training_returns_at_once_and_other_settings_are_refused(tmp_path):
    _, first = run(tmp_path)
    _, again = run(tmp_path)
    assert again.resumed_epochs == 4 and again.history == first.history
    with pytest.raises(CheckpointError, match=r"other settings \(lr: file 0\.1, now 0\.2\)"):
        run(tmp_path, settings={"lr": 0.2})


def _tiny_fit(folder, run_epoch, *, distributed=None, epochs=2):
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return fit(model, epochs=epochs, run_epoch=run_epoch, optimizer=optimizer, settings={"lr": 0.1},
               distributed=distributed or Distributed(), checkpoint_dir=folder)


def test_a_second_identical_training_waits_and_reuses_the_first(tmp_path, capsys):
    """Two processes training into one checkpoint folder at once: the second waits for the
    first's lock, then finds the training finished and runs no epoch (flock locks are per open
    file, so two threads stand for two processes)."""
    started, release, epochs_run = threading.Event(), threading.Event(), {"first": [], "second": []}

    def first_epoch(epoch):
        epochs_run["first"].append(epoch)
        started.set()
        release.wait(10)  # hold the lock until the second is waiting for it
        return {"loss": 1.0 / epoch}

    def second_epoch(epoch):
        epochs_run["second"].append(epoch)
        return {"loss": 1.0}

    results = {}
    first = threading.Thread(target=lambda: results.update(first=_tiny_fit(tmp_path, first_epoch)))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: results.update(second=_tiny_fit(tmp_path, second_epoch)))
    second.start()
    deadline = time.monotonic() + 10
    while "waiting for another process" not in capsys.readouterr().err and time.monotonic() < deadline:
        time.sleep(0.02)
    release.set()
    first.join(10)
    second.join(10)
    assert epochs_run == {"first": [1, 2], "second": []}
    assert results["second"].resumed_epochs == 2 and results["second"].history == results["first"].history


def test_no_lock_under_torchrun_where_every_rank_trains_into_one_folder(tmp_path, monkeypatch):
    """Ranks of one job share the folder: a lock would deadlock them at the per-epoch barrier."""
    monkeypatch.setattr(Distributed, "barrier", lambda self: None)
    done = threading.Event()
    with loop.file_lock(loop.lock_path(tmp_path)):  # as another rank of the same job would hold it
        thread = threading.Thread(target=lambda: (_tiny_fit(tmp_path, lambda epoch: {"loss": 1.0},
                                                             distributed=Distributed(0, 2)), done.set()))
        thread.start()
        assert done.wait(10), "a rank blocked on the checkpoint folder's lock"
        thread.join()


def test_weights_for_another_architecture_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match=r"m\.pt does not fit.*shape mismatch bias: file \(5,\), model \(2,\)"):
        load_model_weights(nn.Linear(3, 2), nn.Linear(3, 5).state_dict(), source=tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model_weights(nn.Sequential(nn.Linear(3, 2)), nn.Linear(3, 2).state_dict(), source="m.pt")
