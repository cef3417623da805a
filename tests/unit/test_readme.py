"""The README is the front door: its reference and commands must match the code."""

from __future__ import annotations

from pathlib import Path

from aggregator.reference import embed

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_configuration_reference_matches_the_models() -> None:
    text = README.read_text(encoding="utf-8")
    assert embed(text) == text, "run: python -m aggregator.reference --write README.md"


QUICK_START = "python3 -m venv .venv && . .venv/bin/activate && pip install . && aggregator serve"
QUICK_TESTS = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && pytest'


def test_quick_start_commands_are_the_documented_ones() -> None:
    """Both work on a stock Debian/Ubuntu (no pip outside a virtualenv), on Python >= 3.11."""
    text = README.read_text(encoding="utf-8")
    quick_start = text[text.index("## Quick start") : text.index("## Try it with sample data")]
    assert QUICK_START in quick_start
    assert QUICK_TESTS in quick_start
    assert "Python >= 3.11" in quick_start
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'requires-python = ">=3.11"' in pyproject


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv" in ci
    assert 'pip install -q -e ".[test]"' in ci
    assert "\npytest\n" in ci


def test_every_command_is_in_the_cli_table() -> None:
    from aggregator.cli import build_parser

    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Command line") : text.index("## Configuration")]
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    for name in commands:
        assert f"| `aggregator {name}" in table, name


def test_the_groove_menu_path_is_the_same_in_readme_and_template() -> None:
    text = README.read_text(encoding="utf-8")
    template = (ROOT / "aggregator" / "static" / "groove-template.liquid").read_text("utf-8")
    assert "*Settings* (under your profile icon) *→ Custom Profile*" in text
    assert "Settings (under your profile icon) > Custom Profile" in template
