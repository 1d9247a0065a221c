import pytest

from relaxbench.relax.schedules import SCHEDULES, make_schedule

E = 10


def test_triangle_matches_the_paper():
    s = make_schedule("triangle", E)
    assert s(0) == 0.0
    assert s(E / 2) == 1.0
    assert s(2) == pytest.approx(2 * 2 / E)
    assert s(E - 1) == pytest.approx(1 - 2 * (E - 1 - E / 2) / E)  # 0.2: not yet 0 on the last epoch
    assert s(E) == 0.0
    assert s(3 * E) == 0.0  # clipped at 0 beyond the end


@pytest.mark.parametrize("name", ["linear_decay", "cosine_decay"])
def test_decays_start_at_peak_and_end_at_zero(name):
    s = make_schedule(name, E, peak=0.5)
    assert s(0) == pytest.approx(0.5)
    assert 0 < s(E / 2) < 0.5
    assert 0 < s(E - 1) < s(E / 2)
    assert s(E) == pytest.approx(0.0, abs=1e-12)
    assert s(2 * E) == pytest.approx(0.0, abs=1e-12)


def test_constant_and_none():
    assert [make_schedule("constant", E, 0.1)(e) for e in (0, E / 2, E - 1, 2 * E)] == [0.1] * 4
    assert [make_schedule("none", E)(e) for e in (0, E / 2, E - 1, 2 * E)] == [0.0] * 4


def test_bad_schedules_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="triangle"):
        make_schedule("triangel", E)
    with pytest.raises(ValueError, match="epochs"):
        make_schedule("triangle", 0)
    with pytest.raises(ValueError, match="non-negative"):
        make_schedule("constant", E, peak=-1)
    with pytest.raises(ValueError, match="epoch"):
        make_schedule("triangle", E)(-1)


def test_every_schedule_is_non_negative():
    for name in SCHEDULES:
        s = make_schedule(name, 7)
        assert all(s(e) >= 0 for e in range(20))
