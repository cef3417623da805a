"""The parts of the cached-hit fast path (issue 14): accepted query strings, hit metrics."""

from __future__ import annotations

from aggregator.emails import parse_email
from aggregator.metrics import Metrics
from aggregator.query import AcceptedQueries
from aggregator.runtime import build
from tests.support.proxy import settings_from


def test_a_hit_under_the_first_bound_lands_in_the_first_bucket_others_by_search() -> None:
    metrics = Metrics()
    metrics.cached_hit(0.0004)
    metrics.cached_hit(0.001)
    metrics.cached_hit(0.3)
    text = metrics.render().decode()
    assert 'aggregator_request_seconds_bucket{cache="hit",le="0.001"} 2.0' in text
    assert 'aggregator_request_seconds_bucket{cache="hit",le="0.25"} 2.0' in text
    assert 'aggregator_request_seconds_bucket{cache="hit",le="0.5"} 3.0' in text
    assert 'aggregator_request_seconds_sum{cache="hit"} 0.3014' in text


def test_accepted_queries_are_bounded_and_sized_by_the_cache() -> None:
    accepted = AcceptedQueries(limit=3)
    for index in range(10):
        accepted.add(f"email=u{index}%40x.com&api_token=t", parse_email(f"u{index}@x.com"))
        assert len(accepted) <= 3
    assert accepted.get("email=u9%40x.com&api_token=t") == "u9@x.com"
    assert accepted.get("email=u0%40x.com&api_token=t") is None
    runtime = build(settings_from(cache={"max_entries": 123}))
    assert runtime.accepted.limit == 123
    assert len(runtime.accepted) == 0
