"""The bench's rate from polled counters: not biased by when the polls fall."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mailstream.bench.consume_rates import concurrent_rate, steady_rate
from mailstream.bench.cpu_time import cpu_ticks
from mailstream.bench.delivery_rate import first_and_last_fifth
from mailstream.bench.pipeline_site import Bench
from mailstream.bench.run_site import topic_names
from mailstream.bench.scale_out import Phase, scale_out_figures
from mailstream.cli.main import main


def polled(
    rate: float, events: int, start: float, every: float, late: float
) -> list[tuple[float, float]]:
    """Readings every ``every`` s of a consumer doing ``rate`` events/s from ``start``;
    the first reading after the start at ``start + late``, the last with all events."""
    readings, t = [], start + late
    while True:
        consumed = min(events, int(rate * (t - start)))
        readings.append((t, float(consumed)))
        if consumed >= events:
            return readings
        t += every


@pytest.mark.parametrize(
    ("rate", "events", "every", "late"),
    [
        (10_000, 50_000, 0.1, 0.01),  # first reading right after the start
        (10_000, 50_000, 0.1, 0.09),  # ... or nearly an interval late
        (20_000, 50_000, 0.25, 0.2),  # a short run polled coarsely
        (500, 5_000, 0.1, 0.05),
    ],
)
def test_a_steady_consumer_is_measured_at_its_rate(
    rate: float, events: int, every: float, late: float
) -> None:
    assert steady_rate(polled(rate, events, 100.0, every, late), events) == pytest.approx(
        rate, rel=0.02
    )


def test_counts_in_batches_give_the_rate_of_the_batches() -> None:
    # 500 events every 50 ms: 10,000 events/s, counted in steps
    readings = [(t / 10, float(min(50_000, 500 * int(t / 10 / 0.05)))) for t in range(1, 60)]
    end = next(i for i, (_, n) in enumerate(readings) if n >= 50_000)
    assert steady_rate(readings[: end + 1], 50_000) == pytest.approx(10_000, rel=0.03)


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        # too few readings between the first and the last event: first to last
        ([(0.0, 100.0), (1.0, 1_100.0)], 1_000.0),
        ([(0.0, 100.0), (0.5, 500.0), (1.0, 1_100.0)], 1_000.0),
    ],
)
def test_few_readings_fall_back_to_first_and_last(
    readings: list[tuple[float, float]], expected: float
) -> None:
    assert steady_rate(readings, 1_100) == pytest.approx(expected)


def two_workers(
    rate: float, share: int, starts: tuple[float, float], every: float = 0.1
) -> list[tuple[float, list[float]]]:
    """Readings every ``every`` s of two workers each doing ``rate`` events/s on
    ``share`` events of its own, from its own start; the last reading has all."""
    readings, t = [], min(starts) + 0.05
    while True:
        counts = [float(min(share, int(rate * max(0.0, t - s)))) for s in starts]
        readings.append((t, counts))
        if sum(counts) >= 2 * share:
            return readings
        t += every


@pytest.mark.parametrize(
    "starts",
    [
        (0.0, 0.0),  # together
        (0.0, 1.0),  # the second joins a second late: the first works alone at each end
        (0.7, 0.0),
    ],
)
def test_two_workers_are_measured_while_both_consume(starts: tuple[float, float]) -> None:
    readings = two_workers(10_000, 50_000, starts)
    assert concurrent_rate(readings, 100_000) == pytest.approx(20_000, rel=0.02)


def test_a_late_worker_drags_the_slope_over_the_whole_run() -> None:
    # what concurrent_rate is for: through every reading, the lone ends count too
    readings = two_workers(10_000, 50_000, (0.0, 1.0))
    summed = [(t, sum(c)) for t, c in readings]
    assert steady_rate(summed, 100_000) < 0.95 * 20_000


@pytest.mark.parametrize(
    ("rate", "events", "every", "late"),
    [(10_000, 50_000, 0.1, 0.01), (20_000, 50_000, 0.25, 0.2), (500, 5_000, 0.1, 0.05)],
)
def test_one_worker_is_measured_as_steady_rate_measures_it(
    rate: float, events: int, every: float, late: float
) -> None:
    readings = polled(rate, events, 100.0, every, late)
    one = [(t, [n]) for t, n in readings]
    assert concurrent_rate(one, events) == steady_rate(readings, events)


@pytest.mark.parametrize(
    ("stat", "ticks"),
    [
        # user nice system idle iowait irq softirq steal guest guest_nice
        ("cpu  100 2 50 800 10 1 2 35 7 0\ncpu0 50 1 25 400 5 0 1 17 3 0\n", (35, 1000)),
        ("cpu  100 0 50 850 0 0 0 0 0 0\n", (0, 1000)),
        ("cpu  100 0 50 850 0 0 0\n", (0, 1000)),  # no steal field
    ],
)
def test_cpu_ticks_read_steal_and_the_total(stat: str, ticks: tuple[int, int]) -> None:
    assert cpu_ticks(stat) == ticks


def test_cpu_ticks_refuse_another_line() -> None:
    with pytest.raises(ValueError, match="cpu line"):
        cpu_ticks("intr 12345 0 0\n")


def _arrivals(*spans: tuple[int, float]) -> list[float]:
    """``n`` arrivals at ``per_s`` for each (n, per_s), one span after the other."""
    times, t = [], 0.0
    for n, per_s in spans:
        for _ in range(n):
            times.append(t)
            t += 1 / per_s
    return times


@pytest.mark.parametrize(
    ("times", "first", "last"),
    [
        (_arrivals((1_000, 500.0)), 500.0, 500.0),  # a steady pace
        (_arrivals((500, 1_000.0), (500, 250.0)), 1_000.0, 250.0),  # slowing down
        (_arrivals((5, 100.0)), None, None),  # too few to tell
    ],
)
def test_delivery_pace_at_the_start_and_at_the_end(
    times: list[float], first: float | None, last: float | None
) -> None:
    got = first_and_last_fifth(times)
    if first is None:
        assert all(math.isnan(r) for r in got)
    else:
        assert got == (pytest.approx(first), pytest.approx(last))


@pytest.mark.parametrize(
    ("broker_url", "apart"),
    [
        (None, False),  # the bench's own broker: names as they are
        ("kafka://10.0.0.5:9092", True),  # someone else's: every name carries the suffix
        ("kafka://a:9092,b:9092", True),
    ],
)
def test_a_run_on_an_existing_broker_names_everything_apart(
    tmp_path: Path, broker_url: str | None, apart: bool
) -> None:
    bench = Bench(tmp_path, broker_url)
    names = [bench.apart("bench-one"), *topic_names(bench.apart("bench-one")).values()]
    assert bench.embedded is not apart
    if apart:
        assert bench.suffix and all(bench.suffix in name for name in names)
        assert bench.broker.url == broker_url
        assert bench.broker.process is None and bench.broker_cpu().pids == []
        assert Bench(tmp_path, broker_url).suffix != bench.suffix  # each run its own
    else:
        assert bench.apart("bench-one") == "bench-one"
        assert "bench-one.events" in names


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["bench", "--broker", "h:9092"], "is not kafka://host:port"),
        (["bench", "--broker", "kafka://h:9092/x"], "is not kafka://host:port"),
        (["bench", "timers", "--broker", "h:9092"], "is not kafka://host:port"),
        (["bench", "--pairs", "0"], "--pairs 0 is not 1 or more"),
    ],
)
def test_bench_refuses_what_it_cannot_run(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv, "--out", str(tmp_path / "x.json")]) == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_scale_out_is_the_ratio_of_the_means_with_each_pair_beside_it() -> None:
    ones = [Phase(10_000, 90, 0.0), Phase(12_000, 80, 0.01), Phase(11_000, 85, 0.0)]
    twos = [Phase(19_800, 95, 0.0, 0.4, "1.70+0.17", 0.05), Phase(17_250, 99, 0.0)]
    figures = scale_out_figures(ones, twos)
    # 18,525 against 11,000
    assert figures["two_workers_ratio_to_one"] == 1.684
    # each two against the ones on both sides of it: 19,800 / 11,000, 17,250 / 11,500
    assert figures["two_workers_ratio_each"] == "1.800 / 1.500"
    assert figures["two_workers_each"] == "19,800 / 17,250"
    assert figures["one_worker_before_after"] == "10,000 / 12,000 / 11,000"
    assert figures["one_worker_cpu_us_per_event_before_after"] == "90 / 80 / 85"
    assert figures["one_worker_again_cpu_stolen_share"] == "0.01 / 0.0"


def test_a_phase_over_before_a_second_reading_gives_no_ratio_instead_of_a_crash() -> None:
    # A worker that read every event before the bench's second reading has a rate of 0;
    # the scale-out figures divided by it.
    ones = [Phase(0.0, None, 0.0), Phase(1000.0, 50, 0.0)]
    twos = [Phase(1500.0, 60, 0.0, 0.2, "1.50+n/a", 0.1)]
    figures = scale_out_figures(ones, twos)
    assert figures["two_workers_ratio_each"] == "3.000"
    figures = scale_out_figures([Phase(0.0, None, 0.0)] * 2, twos)
    assert figures["two_workers_ratio_each"] == "n/a"
    assert figures["two_workers_ratio_to_one"] is None
