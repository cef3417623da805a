"""Rendering a Custom Profile template as Groove would, within resource limits.

The limits are python-liquid 2's ``Environment`` class attributes
(``loop_iteration_limit``, ``local_namespace_limit``, ``output_stream_limit``,
``context_depth_limit``: https://jg-rp.github.io/liquid/guides/resource-limits), plus
our bounds on what a filter may take or make and a render deadline checked per loop.
"""

from __future__ import annotations

import pytest
from liquid.exceptions import LiquidError

from aggregator import groove
from aggregator.groove import groove_keys, render_sidebar
from aggregator.merge import RESERVED_KEYS
from aggregator.preview import sample_template


def render(template: str, **profile: object) -> str:
    return render_sidebar(template, profile, "ada.lovelace@example.com")


def test_groove_fills_exactly_the_keys_it_reserves() -> None:
    assert set(groove_keys("ada.lovelace@example.com")) == RESERVED_KEYS


def test_groove_keys_win_over_the_profile() -> None:
    assert render("{{ first_name }} {{ plan }}", first_name="X", plan="Pro") == "Ada Pro"


def test_the_shipped_template_renders_within_the_limits() -> None:
    html = render(sample_template(), stripe_plan="Pro", profile_complete=True)
    assert html.lstrip().startswith("<div")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (
            '{% assign s = "ab" %}{% for i in (1..40) %}{% assign s = s | append: s %}'
            "{% endfor %}{{ s | size }}",
            "text longer than",
        ),
        ('{% assign s = "' + "x" * 60_000 + '" %}{{ s' + " | append: s" * 10 + " }}", "text"),
        ('{{ (1..30000000) | join: "," | size }}', "more than 10,000 items"),
        ("{{ (1..30000000) | sort | size }}", "more than 10,000 items"),
        ('{{ "' + "a," * 20_000 + '" | split: "," | size }}', "more than 10,000 items"),
        ("{{ 99999999" + " | times: 99999999" * 700 + " }}", "number too large"),
        ("{% for a in (1..1000) %}{% for b in (1..1000) %}{% endfor %}{% endfor %}", "loop"),
        (
            "{% capture s %}" + "x" * 1000 + "{% endcapture %}{% for i in (1..30) %}"
            "{% capture s %}{{ s }}{{ s }}{% endcapture %}{% endfor %}{{ s }}",
            "limit",
        ),
        ("{% for i in (1..9000) %}" + "x" * 200 + "{% endfor %}", "output stream limit"),
    ],
)
def test_a_template_that_grows_without_bound_is_stopped(template: str, reason: str) -> None:
    with pytest.raises(LiquidError, match=reason):
        render(template)


def test_many_loops_in_a_row_are_stopped_by_the_render_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A thousand loops of 10,000 iterations each pass the iteration limit (it bounds one
    # nest of loops): only the deadline stops them. With no time at all, the first
    # iteration of a loop already ends the render, which shows the check is there.
    monkeypatch.setattr(groove, "RENDER_SECONDS", -1.0)
    loops = "{% for i in (1..10000) %}{% if true %}{% endif %}{% endfor %}" * 1000
    with pytest.raises(LiquidError, match="took longer than"):
        render(loops)
    with pytest.raises(LiquidError, match="took longer than"):
        render("{% tablerow i in (1..3) %}{{ i }}{% endtablerow %}")
    with pytest.raises(LiquidError, match="took longer than"):
        render("{% liquid\nfor i in (1..3)\necho i\nendfor %}")
    assert render("no loop at all") == "no loop at all"


def test_loops_within_the_deadline_render() -> None:
    assert render("{% for i in (1..3) %}{{ i }}{% else %}none{% endfor %}") == "123"
    assert render("{% for i in empty %}{{ i }}{% else %}none{% endfor %}", empty=[]) == "none"
    assert "<td" in render("{% tablerow i in (1..2) %}{{ i }}{% endtablerow %}")


def test_ordinary_filters_still_work() -> None:
    assert render('{{ "a,b" | split: "," | join: "+" | upcase }}') == "A+B"
    assert render("{{ seats | times: 2 }}", seats=12) == "24"
    assert render("{{ (1..5) | sum }}") == "15"
