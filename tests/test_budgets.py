"""Budgets are enforced per session, rolling day and epoch, and survive a restart."""

import pytest

from nodes.department.budgets import DAY, BudgetExceeded, Budgets
from nodes.shared.config import Limits

LIMITS = Limits(per_session=100, per_day=250, per_epoch=400)


def test_per_session_limit(tmp_path):
    budgets = Budgets(tmp_path / "b.sqlite")
    with pytest.raises(BudgetExceeded, match="at most 100 elements") as info:
        budgets.charge("civil-affairs", "prison", 1, 101, LIMITS, now=0)
    assert info.value.renews_at is None
    budgets.charge("civil-affairs", "prison", 1, 100, LIMITS, now=0)


def test_rolling_day_renews_when_old_charges_expire(tmp_path):
    budgets = Budgets(tmp_path / "b.sqlite")
    budgets.charge("ca", "prison", 1, 100, LIMITS, now=1000)
    budgets.charge("ca", "prison", 1, 100, LIMITS, now=2000)
    with pytest.raises(BudgetExceeded, match="200 of 250") as info:
        budgets.charge("ca", "prison", 1, 60, LIMITS, now=3000)
    assert info.value.renews_at == 1000 + DAY
    assert "renews at 1970-01-02T00:16:40" in str(info.value)
    budgets.charge("ca", "prison", 1, 50, LIMITS, now=3000)  # exactly at the limit
    budgets.charge("ca", "prison", 1, 60, LIMITS, now=1000 + DAY + 1)
    budgets.charge("other-client", "prison", 1, 100, LIMITS, now=3000)  # budgets are per client


def test_epoch_budget_and_restart(tmp_path):
    path = tmp_path / "b.sqlite"
    budgets = Budgets(path)
    for day in range(4):
        budgets.charge("ca", "prison", 1, 100, LIMITS, now=day * 2 * DAY)
    budgets.close()
    reopened = Budgets(path)  # a node restart keeps every charge
    assert reopened.used("ca", "prison", 1, now=8 * DAY)["epoch"] == 400
    with pytest.raises(BudgetExceeded, match="rotates to a new key epoch"):
        reopened.charge("ca", "prison", 1, 1, LIMITS, now=10 * DAY)
    reopened.charge("ca", "prison", 2, 100, LIMITS, now=10 * DAY)  # a new epoch starts afresh
