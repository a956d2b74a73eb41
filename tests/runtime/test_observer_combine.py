"""``observer.combine``: several observers as one, each told of every hook it overrides."""

from __future__ import annotations

from overture.runtime.observer import NO_OBSERVER, Observer, combine


class Deaths(Observer):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def dead_letter(self, dead_letter_id: str, source: str, reason: str) -> None:
        self.seen.append(dead_letter_id)


class Starts(Observer):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def instance_started(self, instance_id: str, process: str) -> None:
        self.seen.append(instance_id)

    def dead_letter(self, dead_letter_id: str, source: str, reason: str) -> None:
        self.seen.append("dl:" + dead_letter_id)


def test_every_observer_hears_the_hooks_it_overrides() -> None:
    deaths, starts = Deaths(), Starts()
    both = combine(deaths, Observer(), starts)
    both.dead_letter("d1", "decode", "bad")
    both.instance_started("i1", "orders")
    both.commit_finished(1, 2, 0.1)  # nobody overrides it: a no-op
    assert deaths.seen == ["d1"]
    assert starts.seen == ["dl:d1", "i1"]


def test_a_hook_only_one_overrides_is_that_observers_own_method() -> None:
    deaths, starts = Deaths(), Starts()
    both = combine(deaths, starts)
    assert both.instance_started == starts.instance_started


def test_nothing_to_combine_is_the_default_and_one_is_itself() -> None:
    deaths = Deaths()
    assert combine() is NO_OBSERVER
    assert combine(Observer(), NO_OBSERVER) is NO_OBSERVER
    assert combine(NO_OBSERVER, deaths) is deaths
