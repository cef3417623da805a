"""Shared fixtures: each support module registers its own as a pytest plugin."""

pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.pg",
    "tests.support.fake_stripe",
    "tests.support.upstreams",
    "tests.support.redis_cluster",
]
