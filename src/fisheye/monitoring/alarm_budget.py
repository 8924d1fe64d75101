"""The false-alarm budget of repeated drift tests: each test spends the photos it adds.

With a budget of r false alarms per photo, a test that follows k photos not yet spent runs at
level alpha = r x k (at most 0.5): the levels of all tests over N photos add up to at most
r x N, so on a healthy stream the expected number of false alarms is at most r x N whatever
the windows' overlap or the test schedule (docs/monitoring.md). A test whose level is below
what its p-value can reach (1 / (permutations + 1)) cannot alarm, so it spends nothing: its
photos stay in the budget of the next test.
"""

from __future__ import annotations

from fisheye.monitoring.drift import DriftResult

MAX_ALPHA = 0.5


class AlarmBudget:
    """Spends `per_photo` false alarms per photo over a sequence of drift tests."""

    def __init__(self, per_photo: float, unspent: int = 0) -> None:
        self.per_photo = per_photo
        self.unspent = unspent  # photos whose share of the budget no test used yet

    def alpha(self, new_photos: int) -> float:
        """The level of a test that follows `new_photos` photos (at least one photo's worth)."""
        self.unspent += max(0, int(new_photos))
        return min(MAX_ALPHA, self.per_photo * max(1, self.unspent))

    def settle(self, result: DriftResult) -> None:
        """After the test: its photos are spent if it could have alarmed at its level."""
        level = result.alpha / (2 if result.class_mix_p_value is not None else 1)
        if level >= 1 / (result.n_permutations + 1):
            self.unspent = 0
