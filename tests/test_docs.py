"""The documentation's figures are generated from the published runs: every table and cited value
between markers is what ``python main.py docs`` makes of ``results/published/``, and every marker
names something that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unmask.cli import main
from unmask.docs import RUN_TABLES, documentation_files, generate_docs, lookup, regenerate
from unmask.publish import PUBLISHED_DIR, read_publications
from unmask.report import accuracy_table, threat_models_table

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE = {
    "run": "cs5-2-compact-0123abcd", "format": 1,
    "code": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False, "version": "0.1.0"},
    "date": "2025-03-04T05:06:07+00:00", "command": "python main.py",
    "libraries": {"python": "3.11.7", "torch": "2.14.1", "torchvision": "0.29.1", "foolbox": "3.3.4"},
    "machine": {"device": "cpu", "cpu": "Test CPU 9000", "cpu_capability": "AVX2", "cpus": 4, "usable_cpus": 2,
                "threads": 2, "processes": 1, "gpu": None},
}


def fixture_metrics(gain: float = 31.5) -> dict:
    """A default run's metrics.json in miniature: gray-box tables, K, stage times, white-box rows."""
    detection = {"auc": 0.95, "auc_soft": 0.97, "n_pairs": 40, "threshold": 0.8, "tpr": 0.9, "fpr": 0.05,
                 "tpr_soft": 0.92, "fpr_soft": 0.08}
    summary = [{"fpr_target": 0.1, "norm": "linf", "epsilon": epsilon, "defense": defense, "over": "all attacks",
                "n_images": 20, "accuracy_m": 0.5, "robust_accuracy_with_detection": 0.25, "success_rate": 0.5,
                "accuracy_unmask": 0.4 if defense == "UnMask" else None, "accuracy_system": 0.3,
                "intervals": {"accuracy_system": [0.1, 0.5]}, "strongest": {}}
               for epsilon in (8.0, 16.0, 32.0) for defense in ("UnMask", "undefended M", "adversarial training")]
    return {
        "format": 6, "config": {"class_set": "cs5-2", "model": "compact", "dataset": "synthetic"},
        "clean": {"accuracy_m": 0.97, "accuracy_adv_trained": 0.9, "accuracy_unmask": 0.88, "n_images": 50},
        "attacks": [{"name": "pgd_linf", "norm": "linf", "epsilon": 8, "accuracy_m": 0.02, "accuracy_adv_trained": 0.5,
                     "accuracy_unmask": 0.86, "detection": detection}],
        "summary": {"mean_accuracy_m": 0.02, "mean_accuracy_unmask": 0.86, "mean_accuracy_adv_trained": 0.5,
                    "mean_gain_over_adv_training": gain},
        "thresholds": {"target_fpr": 0.1, "set_jaccard": 0.5, "soft_jaccard": 0.4},
        "k": {"map_mask_50": 0.8, "map_mask": 0.4, "map_box_50": 0.9, "map_box": 0.5, "part_precision": 0.97,
              "part_recall": 0.95},
        "k_robust": None,
        "adaptive": [{"defense": "UnMask", "threat_model": "white-box", "attack": "joint_linf", "epsilon": 8.0,
                      "fpr_target": 0.1, "n_images": 20, "success_rate": 0.5, "robust_accuracy_with_detection": 0.25,
                      "accuracy_m": 0.5}],
        "adaptive_summary": summary, "adaptive_comparisons": [],
        "timing": {"data": 13.0, "train_m": 117.0, "total": 130.0},
        "provenance": PROVENANCE,
    }


def published(root: Path, name: str = "default", **options) -> Path:
    folder = root / PUBLISHED_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(fixture_metrics(**options)))
    (folder / "tables.md").write_text("tables\n")
    return folder


PAGE = """# Results

<!-- table: default/accuracy -->
<!-- end table -->

Prose: UnMask gains <!-- value: default/summary.mean_gain_over_adv_training as points -->?<!-- end value --> points
on <!-- value: default/@machine -->?<!-- end value -->; the deployed decision at 8 is right on
<!-- value: default/adaptive_summary[defense=UnMask,epsilon=8,over=all attacks].accuracy_system as percent -->?<!-- end value -->%.

<!-- table: default/white-box -->
<!-- end table -->
"""


@pytest.fixture
def repository(tmp_path):
    published(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# front page\n\n<!-- table: default/stages -->\n<!-- end table -->\n")
    (tmp_path / "docs" / "results.md").write_text(PAGE)
    return tmp_path


def test_the_generator_fills_each_block_with_a_caption_and_the_reports_table(repository):
    report = generate_docs(repository)
    assert report.problems == [] and {path.name for path in report.differing} == {"README.md", "results.md"}
    page = (repository / "docs" / "results.md").read_text()
    metrics = fixture_metrics()
    assert accuracy_table(metrics).strip() in page  # the very formatter tables.md uses
    assert threat_models_table(metrics, norms=("linf",), epsilons=(8.0, 16.0), note=False).strip() in page
    assert "| 10.0 | linf | 32 |" not in page  # the README's white-box table: eps 8 and 16 only
    caption = next(line for line in page.splitlines() if line.startswith("*Run `default`"))
    for words in ("cs5-2-compact-0123abcd", "commit 0123456", "2025-03-04", "Test CPU 9000 (AVX2), 2 CPUs, "
                  "2 torch threads", "torch 2.14.1"):
        assert words in caption
    assert "at 10% FPR" in page and "Gray-box: the attacker knows M only" in page  # threat model and threshold
    assert "UnMask gains <!-- value: default/summary.mean_gain_over_adv_training as points -->+31.5<!--" in page
    assert "CPU only: Test CPU 9000" in page and " as percent -->30.0<!-- end value -->%" in page
    assert "| **total** | 130 (2 min) |" in (repository / "README.md").read_text()
    assert generate_docs(repository, check=True).ok  # generating again changes nothing


def test_an_edited_table_or_value_is_caught_and_regenerated(repository):
    generate_docs(repository)
    page = repository / "docs" / "results.md"
    generated = page.read_text()
    page.write_text(generated.replace("| pgd_linf | 8 | 2.0 | 50.0 | 86.0 |", "| pgd_linf | 8 | 2.0 | 50.0 | 88.0 |"))
    report = generate_docs(repository, check=True)
    assert [str(problem) for problem in report.changed] == [
        "docs/results.md:3: the table default/accuracy differs from what the published data generates "
        "(python main.py docs rewrites it)"]
    assert not report.ok and "88.0" in page.read_text()  # --check writes nothing
    page.write_text(generated.replace("-->+31.5<!--", "-->+44.5<!--"))
    assert "the value default/summary.mean_gain_over_adv_training differs" in str(
        generate_docs(repository, check=True).changed[0])
    generate_docs(repository)
    assert page.read_text() == generated


def test_new_data_changes_the_generated_figures(repository):
    generate_docs(repository)
    published(repository, gain=-3.25)
    report = generate_docs(repository)
    assert [path.name for path in report.differing] == ["results.md"]
    assert "-->-3.2<!-- end value --> points" in (repository / "docs" / "results.md").read_text()


@pytest.mark.parametrize("marker, message", [
    ("<!-- table: robust-fgsm/robust -->\n<!-- end table -->", "no published run 'robust-fgsm'"),
    ("<!-- table: default/nope -->\n<!-- end table -->", "unknown table 'nope' of run 'default'; expected one of: "),
    ("<!-- table: default/robust -->\n<!-- end table -->", "run 'default' has no k_robust"),
    ("<!-- table: default -->\n<!-- end table -->", "expected NAME/TABLE"),
    ("<!-- table: default/accuracy -->\nno end", "a table marker without its <!-- end table -->"),
    ("<!-- value: default/summary.nope -->1<!-- end value -->", "no value at 'nope'"),
    ("<!-- value: default/adaptive_summary[defense=UnMask-R].accuracy_system -->1<!-- end value -->",
     "no value at 'adaptive_summary[defense=UnMask-R]'"),
    ("<!-- value: default/summary as number -->1<!-- end value -->", "not one value"),
    ("<!-- value: default/summary.mean_accuracy_m as nope -->1<!-- end value -->", "unknown value format 'nope'"),
    ("<!-- value: default/clean.n_images\n<!-- end value -->", "a value marker without its <!-- end value -->"),
])
def test_a_marker_naming_what_does_not_exist_is_a_problem(repository, marker, message):
    (repository / "docs" / "broken.md").write_text(f"# broken\n\n{marker}\n")
    problems = generate_docs(repository, check=True).problems
    assert len(problems) == 1 and problems[0].path == Path("docs/broken.md") and problems[0].line == 3
    assert message in problems[0].message


def test_paths_select_list_elements_by_their_fields():
    metrics = fixture_metrics()
    assert lookup(metrics, "attacks[name=pgd_linf,epsilon=8].detection.auc") == 0.95
    assert lookup(metrics, "attacks.0.name") == "pgd_linf"
    assert lookup(metrics, "adaptive_summary[defense=adversarial training,epsilon=16.0].accuracy_m") == 0.5
    assert lookup(metrics, "thresholds.target_fpr") == 0.1


def test_the_docs_command_writes_and_checks(repository, capsys):
    assert main(["docs", "--root", str(repository), "--check"]) == 1
    assert "differs from what the published data generates" in capsys.readouterr().err
    assert main(["docs", "--root", str(repository)]) == 0
    assert "docs: rewrote" in capsys.readouterr().out
    assert main(["docs", "--root", str(repository), "--check"]) == 0


# --- the repository's own documentation -----------------------------------------------------------


def test_every_generated_block_of_the_documentation_matches_the_published_data():
    """Fails when a table or cited figure in README.md or docs/ was edited by hand, when the
    published data changed without ``python main.py docs``, or when a marker names a published
    run (results/published/NAME/), table or value that does not exist."""
    report = generate_docs(ROOT, check=True)
    assert report.ok, "\n".join(str(problem) for problem in report.problems + report.changed)


def test_the_documentation_has_markers_and_every_publication_is_readable():
    markers = sum(len(re.findall(r"<!-- (table|value): ", path.read_text())) for path in documentation_files(ROOT))
    assert markers >= 10
    for publication in read_publications(ROOT / PUBLISHED_DIR).values():
        assert publication.provenance.get("code") and publication.provenance.get("machine"), publication.name


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    pages = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))
    assert len(pages) >= 8
    assert [page for page in pages if f"]({page})" not in readme] == []
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_the_publishing_page_lists_every_table_a_run_generates():
    page = (ROOT / "docs" / "publishing.md").read_text()
    page = page[page.index("The tables a published run generates"):]
    listed = re.findall(r"^\| `([a-z-]+)` \|", page, flags=re.M)
    assert listed == list(RUN_TABLES)


def test_no_docs_page_carries_working_notes():
    for path in documentation_files(ROOT):
        text = re.sub(r"`[^`\n]*`", "", path.read_text().lower())  # quoted messages may say what they say
        for note in ("done-when", "this session", "+10 asked", "i did not", "this machine", "the earlier instance",
                     "the development machine", "the idle machine"):
            assert note not in text, f"{path.relative_to(ROOT)}: {note!r}"


def test_markers_inside_a_code_block_document_the_syntax_and_are_left_alone(repository):
    text = "# syntax\n\n```markdown\n<!-- table: NAME/TABLE -->\n<!-- end table -->\n<!-- value: NAME/PATH -->\n```\n"
    (repository / "docs" / "syntax.md").write_text(text)
    report = generate_docs(repository)
    assert report.problems == [] and (repository / "docs" / "syntax.md").read_text() == text


def test_regenerate_leaves_text_without_markers_alone():
    text = "# nothing here\n\nplain | table |\n"
    assert regenerate(text, {}) == (text, [], [])


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_documentation_reaches_its_file_and_heading():
    for path in documentation_files(ROOT):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                assert anchor in {_slug(heading) for heading in headings}, f"{path.relative_to(ROOT)}: #{anchor}"


def test_the_licence_and_the_citation_are_the_projects():
    assert "license = { text = \"MIT\" }" in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = (ROOT / "CITATION.cff").read_text()
    for words in ("cff-version: 1.2.0", "UnMask: Adversarial Detection and Defense Through Robust Feature Alignment",
                  "arXiv:2002.09576", "https://github.com/poloclub/unmask", "license: MIT"):
        assert words in citation


def _active_summary() -> dict:
    share = {"value": 0.75, "low": 0.4, "high": 0.9, "n": 8}
    return {"n_images": 8, "pass_rate": 0.9, "run": "cs5-2-compact-0123abcd",
            "rows": [{"test": "evasion", "attack": "joint_linf", "epsilon": 8.0, "fpr_target": 0.1,
                      "criterion": "evaded", "set_up": 8, "no_planted_solution": 1, "setup_failed": 0,
                      "clean_already": 0, "n_tested": 8, "passed": share, "random": {**share, "value": 0.1},
                      "weak": True}],
            "setups": [],
            "provenance": {**PROVENANCE, "date": "2025-04-05T00:00:00+00:00",
                           "code": {**PROVENANCE["code"], "commit": "fedcba9876543210"}}}


def test_a_runs_attack_unit_tests_are_published_with_it_and_captioned_with_their_own_provenance(tmp_path):
    from unmask.publish import publish

    run = tmp_path / "results" / "cs5-2-compact-0123abcd"
    (run / "active").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(fixture_metrics()))
    (run / "tables.md").write_text("tables\n")
    (run / "active" / "active_tests.json").write_text(json.dumps(_active_summary()))
    publication = publish(run, "default", published=tmp_path / PUBLISHED_DIR)
    assert (publication.folder / "active_tests.json").is_file()
    (tmp_path / "README.md").write_text("<!-- table: default/active-tests -->\n<!-- end table -->\n")
    assert generate_docs(tmp_path).problems == []
    text = (tmp_path / "README.md").read_text()
    assert "| evasion | `joint_linf` | 8 | 10% |" in text and "Weak: `joint_linf`" in text
    assert "commit fedcba9, 2025-04-05" in text and "folder `cs5-2-compact-0123abcd`" in text


def test_the_ladder_tables_need_a_ladder():
    (problem,) = regenerate("<!-- table: default/ladder -->\n<!-- end table -->\n",
                            read_publications_of(fixture_metrics()))[1]
    assert "has no adaptive_ladder" in problem.message


def read_publications_of(metrics: dict) -> dict:
    from unmask.publish import Publication

    return {"default": Publication("default", Path("default"), "run", metrics)}
