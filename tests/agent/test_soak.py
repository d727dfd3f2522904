"""The soak's short version (bench/agent_soak.py runs the long one): slice churn at 50 changes per second for
15 s against the real agent; every reap made, nothing complained about, nothing that accumulates."""

from __future__ import annotations

from bench.agent_soak import soak


async def test_a_short_soak_reaps_everything_and_leaks_nothing() -> None:
    result = await soak(services=300, rate=50.0, seconds=15.0, settle=10.0)
    assert result["removals"] >= 300  # the rate was kept up
    assert result["missed_reaps"] == 0, result
    assert result["complaints"] == [], result
    # Some growth is warm-up: the default executor's threads (6 on 2 cores), pooled API connections. A leak
    # per change (over 700 of them) is far beyond it.
    for counted, slack in (("threads", 6), ("tasks", 5), ("open_files", 10)):
        trend = result[counted]
        assert trend["last"] <= trend["first"] + slack, (counted, result)
