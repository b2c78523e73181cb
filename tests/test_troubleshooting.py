"""The troubleshooting page shows what the command line and the library print today: each row
marked ✓ in docs/troubleshooting.md is produced here and matched, its <...> placeholders standing
for paths and its '...' for the rest of the message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from unmask.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


def pattern(shown: str) -> re.Pattern[str]:
    """The page's text as a pattern: ``<...>`` any path, ``...`` anything."""
    parts = re.split(r"(<[^<>]+>|\.\.\.)", shown)
    return re.compile("".join(".+?" if part.startswith("<") else ".*" if part == "..." else re.escape(part)
                              for part in parts))


def shown_on_the_page(text: str) -> str:
    page = PAGE.read_text(encoding="utf-8")
    assert f"`{text}`" in page, f"the troubleshooting page does not show: {text}"
    return text


CLI_ROWS = [
    (lambda tmp: ["--dataset", "unmask", "--data-dir", str(tmp / "nothing")],
     "error: dataset folder <root>/cs5-2/train does not exist; expected the layout "
     "<root>/<class set>/<split>/<class>/*{.jpg,.jpeg,.png,.bmp,.gif,.webp}"),
    (lambda tmp: ["--m-checkpoint", str(_text_file(tmp))],
     "error: <file> (given with --m-checkpoint) is not a weights file of the expected kind: ... --m-checkpoint "
     "expects M's trained weights: ..."),
    (lambda tmp: ["--class-set", "nope"],
     "python main.py: error: --class-set: unknown class set 'nope'; expected one of: cs3-1, ..."),
    (lambda tmp: ["--attacks", "nope:8"],
     "python main.py: error: --attacks: unknown attack 'nope' in 'nope:8'; expected one of: paper, ..."),
    (lambda tmp: ["--lr", "inf"], "python main.py: error: --lr: expected a finite number, got inf"),
    (lambda tmp: ["--attacks", "pgd_linf:inf"],
     "python main.py: error: --attacks: attack pgd_linf: epsilon must be a finite number > 0 on the 0-255 scale, "
     "got inf"),
    (lambda tmp: ["--attacks", "pgd_linf:1e9"],
     "python main.py: error: --attacks: attack pgd_linf: epsilon 1e+09 exceeds 255, the whole 0-255 pixel range; ..."),
    (lambda tmp: ["publish", str(_unpublishable_run(tmp)), "--name", "old"],
     "error: <root>/metrics.json records no provenance (it lacks code, date, command, libraries, machine): it was "
     "written by an earlier version of unmask, ..."),
]


def _text_file(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("not weights\n")
    return path


def _unpublishable_run(folder: Path) -> Path:
    run = folder / "old-run"
    run.mkdir(exist_ok=True)
    (run / "metrics.json").write_text(json.dumps({"format": 5}))
    (run / "tables.md").write_text("")
    return run


@pytest.mark.parametrize("arguments, shown", CLI_ROWS, ids=[row[1][:40] for row in CLI_ROWS])
def test_a_checked_row_is_what_the_command_line_prints(arguments, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything a run would write stays here
    argv = arguments(tmp_path)
    code = main(argv if argv[0] == "publish" else [*argv, "--verbosity", "0"])
    error = capsys.readouterr().err
    assert code == (2 if shown.startswith("python main.py:") else 1)
    assert pattern(shown_on_the_page(shown)).search(error), error


def test_every_checked_row_of_the_page_is_checked_here():
    checked = [line for line in PAGE.read_text(encoding="utf-8").splitlines() if "✓ |" in line]
    assert len(checked) == 6  # the rows above: data folder, checkpoint, names, numbers, epsilon, publish


def test_the_librarys_rows_are_what_unmask_raises():
    from unmask.protect import UnMask

    from .protect.conftest import Says, numbered, one_hot

    images = numbered(8)
    images[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError) as raised:
        UnMask(Says(one_hot([0] * 8, 5)), lambda x: [set()] * len(x), "cs5-2", threshold=0.5)(images)
    assert pattern(shown_on_the_page(f"ValueError: {raised.value}")).fullmatch(f"ValueError: {raised.value}")
    with pytest.raises(ValueError) as raised:
        UnMask(Says([[0.0] * 10] * 8), lambda x: [set()] * len(x), "cs5-2", threshold=0.5)(torch.zeros(8, 3, 8, 8))
    shown_on_the_page(f"ValueError: {raised.value}")
