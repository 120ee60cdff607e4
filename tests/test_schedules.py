import math

import pytest

from conspo.schedules import MARGIN_SCHEDULES, margin_schedule


def test_constant():
    f = margin_schedule("constant", start=0.2)
    assert [f(t) for t in (0, 5, 10_000)] == [0.2, 0.2, 0.2]


def test_linear_and_clamp():
    f = margin_schedule("linear", start=0.0, end=0.4, horizon=100)
    assert (
        f(0) == 0.0 and f(50) == pytest.approx(0.2) and f(100) == pytest.approx(0.4) and f(1000) == pytest.approx(0.4)
    )


def test_cosine():
    f = margin_schedule("cosine", start=0.1, end=0.5, horizon=10)
    assert (
        f(0) == pytest.approx(0.1)
        and f(5) == pytest.approx(0.3)
        and f(10) == pytest.approx(0.5)
        and f(99) == pytest.approx(0.5)
    )
    assert f(2) == pytest.approx(0.1 + 0.4 * (1 - math.cos(math.pi * 0.2)) / 2)


def test_step_plateaus():
    f = margin_schedule("step", start=0.0, end=0.3, horizon=90, stages=4)
    assert [round(f(t), 6) for t in (0, 22, 23, 45, 68, 89, 90, 500)] == [0.0, 0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3]
    g = margin_schedule("step", start=0.0, end=0.3, horizon=10)  # 2 stages: start, then end from the middle
    assert [g(t) for t in (0, 4, 5, 10)] == [0.0, 0.0, 0.3, 0.3]


def test_every_kind_starts_at_start_and_ends_at_end():
    for kind in MARGIN_SCHEDULES:
        f = margin_schedule(kind, start=0.05, end=0.05 if kind == "constant" else 0.25, horizon=20)
        assert f(0) == pytest.approx(0.05)
        assert f(20) == pytest.approx(0.05 if kind == "constant" else 0.25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="exponential"), "constant, linear, cosine, step"),
        (dict(kind="linear", end=0.1), "horizon"),
        (dict(kind="linear", end=0.1, horizon=0), "horizon"),
        (dict(kind="linear", horizon=10), "end"),
        (dict(kind="cosine", end=float("nan"), horizon=10), "finite"),
        (dict(kind="constant", start="big"), "number"),
        (dict(kind="step", end=0.1, horizon=10, stages=1), "stages"),
    ],
)
def test_bad_arguments(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=match):
        margin_schedule(kind, **kwargs)


def test_negative_step_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        margin_schedule("linear", end=0.1, horizon=3)(-1)
