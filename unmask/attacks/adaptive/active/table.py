"""The attack unit tests' table, from their summary (``active_tests.json``, written by
``unmask.experiment.active_tests``): what ``active_tests.md`` and the documentation show."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PASS_RATE = 0.9
"""An attack that passes a test on fewer than this share of the images set up for it is weak."""

CRITERION_WORDS = {"evaded": "M wrong, not flagged", "system": "deployed decision wrong",
                   "inverted": "M wrong (planted: flagged)", "reclassification": "re-classification wrong"}


def format_active_tests(summary: Mapping[str, Any]) -> str:
    """``active_tests.md``: a heading, the run and what made it (``unmask.environment``), then
    ``active_tests_table``."""
    lines = [f"### Attack unit tests (active tests) — white-box, {summary['n_images']} images of the adaptive "
             f"sample", ""]
    provenance = summary.get("provenance")
    if provenance:
        from unmask.environment import describe_environment

        lines += [f"Run {summary.get('run', '?')}: {describe_environment(provenance)}.", ""]
    return "\n".join(lines) + "\n" + active_tests_table(summary) + active_setups_table(summary)


def active_tests_table(summary: Mapping[str, Any]) -> str:
    """The tests' table (markdown) from an ``active_tests.json`` summary: per test, attack, budget
    and threshold, what counts as passing, the images set up, those with no planted solution
    (reported, not counted), those whose setup failed or whose clean image already passes, the
    share passed and the random search's on the same images, with Wilson 95% intervals, and the
    verdict (weak below ``summary['pass_rate']``); then the weak attacks by name."""
    lines = ["| test | attack | ε (L∞, 0-255) | FPR | passed when | set up | no planted solution | setup failed | "
             "clean already | passed [95% CI] | random search [95% CI] | verdict |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---|"]
    for row in summary["rows"]:
        verdict = "–" if row["n_tested"] == 0 else ("weak" if row["weak"] else "passes")
        lines.append(f"| {row['test']} | `{row['attack']}` | {row['epsilon']:g} | {row['fpr_target']:.0%} | "
                     f"{CRITERION_WORDS[row['criterion']]} | {row['set_up']} | {row['no_planted_solution']} | "
                     f"{row['setup_failed']} | {row['clean_already']} | {_share(row['passed'])} | "
                     f"{_share(row['random'])} | {verdict} |")
    notes = [f"- `{row['attack']}` at ε = {row['epsilon']:g}, inverted test: on {row['evaded']} of its "
             f"{row['n_tested']} images M is wrong and the image *not* flagged (more than the planted kind)"
             for row in summary["rows"] if row["test"] == "inverted" and row.get("evaded")]
    weak = [f"`{row['attack']}` ({row['test']}, ε = {row['epsilon']:g})" for row in summary["rows"] if row["weak"]]
    lines += ["", f"An attack is weak where it passes on fewer than {summary['pass_rate']:.0%} of the images set up "
              "for it (images whose clean version already passes are left out). "
              + (f"Weak: {', '.join(weak)}." if weak else "No attack is weak.")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n\n"


def _share(measured: Mapping[str, float | int]) -> str:
    if not measured["n"]:
        return "–"
    return f"{100 * measured['value']:.0f}% [{100 * measured['low']:.0f}, {100 * measured['high']:.0f}] " \
           f"of {measured['n']}"


def active_setups_table(summary: Mapping[str, Any]) -> str:
    """How each test's modified pipelines were set up (markdown): per test, budget and threshold,
    the images by status (``STATUSES``), the planted points' median L-inf distance, and the mean
    share of fresh inner points whose modified output is not the true class's (0: the modified
    model holds the whole shrunk ball, as a binarization should)."""
    lines = ["| test | ε (L∞, 0-255) | FPR | images | set up | no target | no planted point | not separable | "
             "not verified | clean already wrong | planted point's distance (median, 0-255) | fresh inner points "
             "changed |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in summary["setups"]:
        statuses = entry["statuses"]
        distance = entry["median_planted_distance"]
        changed = entry["inner_changed"]
        lines.append(f"| {entry['test']} | {entry['epsilon']:g} | {entry['fpr_target']:.0%} | {entry['n_images']} | "
                     f"{statuses['ok']} | {statuses['no_target']} | {statuses['no_planted_point']} | "
                     f"{statuses['not_separable']} | {statuses['not_verified']} | {statuses['clean_wrong']} | "
                     f"{'–' if distance is None else f'{distance:.0f}'} | "
                     f"{'–' if changed is None else f'{100 * changed:.1f}%'} |")
    return "\n".join(lines) + "\n"
