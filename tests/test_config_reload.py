"""The mounted config is re-read without a restart; a bad file never loses the last good config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ipvs_reaper.config import Config, ReapMode, SysctlMode
from ipvs_reaper.config_reload import ReloadingConfig


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_without_a_file_the_defaults_apply() -> None:
    assert ReloadingConfig(None).refresh().config == Config()


def test_garbage_keeps_the_last_good_config_then_a_valid_change_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("expireNodestConn: report-only\n")
    reloading = ReloadingConfig(path)
    good = reloading.refresh().config
    assert good is not None and good.expire_nodest_conn is SysctlMode.REPORT_ONLY

    path.write_text("policy: {gone: {reap: sometimes}}\n")
    for _ in range(3):
        state = reloading.refresh()
        assert state.config is good
        assert state.error is not None and "policy.gone.reap" in state.error
    assert len(errors(caplog)) == 1, "one clear error per bad content, not one per refresh"
    assert "keeping the last good config" in errors(caplog)[0]

    path.write_text(": [\n")
    assert "not valid YAML" in (reloading.refresh().error or "")
    assert len(errors(caplog)) == 2

    path.write_text("policy: {gone: {reap: never}}\n")
    state = reloading.refresh()
    assert state.error is None and state.config is not None
    assert state.config.policy.gone.reap is ReapMode.NEVER


def test_a_vanished_file_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("{}\n")
    reloading = ReloadingConfig(path)
    assert reloading.refresh().config == Config()
    path.unlink()
    state = reloading.refresh()
    assert state.config == Config() and state.error is not None and "No such file" in state.error


@pytest.mark.parametrize("content", [None, "breaker: {maxShare: 7}\n"])
def test_no_good_config_yet_means_nothing_to_act_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None
) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    state = ReloadingConfig(path).refresh()
    # Not the defaults: they may reap what the operator's unreadable file would have kept.
    assert state.config is None and state.error is not None
    assert "reaping nothing until it is fixed" in errors(caplog)[0]
