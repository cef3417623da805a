"""The README is the front door: its reference and commands must match the code."""

from __future__ import annotations

from pathlib import Path

from aggregator.reference import embed

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_reference_matches_the_models() -> None:
    text = README.read_text(encoding="utf-8")
    assert embed(text) == text, "run: python -m aggregator.reference --write README.md"


def test_quick_start_commands_are_the_documented_ones() -> None:
    text = README.read_text(encoding="utf-8")
    assert "pip install . && aggregator serve" in text
    assert 'pip install -e ".[test]" && pytest' in text
