"""Shared pytest hooks: tests marked ``slow`` run only when SOFTPROMPT_SLOW=1."""

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Slow tests load real weights or train for minutes; keep the default run under a minute.
    if os.environ.get("SOFTPROMPT_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow: set SOFTPROMPT_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
