"""Repeated client errors: the first of a kind, then one line per interval with a count."""

from __future__ import annotations

import logging

from mailstream.observability.log_rate import RepeatFilter, install, log_summaries


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


def handlers(clock: Clock, n: int = 1) -> tuple[RepeatFilter, list[Lines]]:
    outs = [Lines() for _ in range(n)]
    repeat = RepeatFilter(interval=30.0, clock=clock)
    for out in outs:
        out.addFilter(repeat)
    return repeat, outs


def emit(name: str, level: int, msg: str, *args: object, outs: list[Lines]) -> None:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    for out in outs:
        out.handle(record)


CONNECT = "Unable connect to node with id %s: %s"


def test_a_flood_of_connection_errors_is_one_line_then_one_summary_per_interval() -> None:
    clock = Clock()
    repeat, (out,) = handlers(clock)
    for i in range(5000):  # 250 a second for 20 s
        clock.now = i * 0.004 * 1.0
        emit("aiokafka.conn", logging.ERROR, CONNECT, 111, "[Errno 111] refused", outs=[out])
    assert out.lines == [
        "aiokafka.conn ERROR Unable connect to node with id 111: [Errno 111] refused"
    ]
    clock.now = 31.0
    emit("aiokafka.conn", logging.ERROR, CONNECT, 111, "[Errno 111] refused", outs=[out])
    assert out.lines[-1].endswith("refused (4999 more like it in the last 31 s, not logged)")
    assert len(out.lines) == 2


def test_when_the_errors_stop_the_summary_still_comes() -> None:
    clock = Clock()
    repeat, (out,) = handlers(clock)
    for i in range(3):
        emit("aiokafka.client", logging.ERROR, "Unable to update metadata from [%s]", i, outs=[out])
    assert repeat.summaries() == []  # not before the interval is over
    clock.now = 30.0
    summaries = repeat.summaries()
    assert summaries == [
        (
            "aiokafka.client",
            logging.ERROR,
            "Unable to update metadata from [2] (2 more like it in the last 30 s, not logged)",
        )
    ]
    assert repeat.summaries() == []


def test_each_kind_and_each_logger_has_its_own_count() -> None:
    clock = Clock()
    _, (out,) = handlers(clock)
    for _ in range(3):
        emit("aiokafka.conn", logging.ERROR, CONNECT, 1, "x", outs=[out])
        emit(
            "aiokafka.consumer.fetcher",
            logging.ERROR,
            "Failed fetch messages from %s",
            1,
            outs=[out],
        )
        emit("faust.transport", logging.WARNING, "Heartbeat failed", outs=[out])
    assert len(out.lines) == 3


def test_mailstream_own_lines_and_debug_are_never_held_back() -> None:
    clock = Clock()
    _, (out,) = handlers(clock)
    for _ in range(3):
        emit("mailstream.state.staged_flush", logging.ERROR, "flush failed", outs=[out])
        emit("aiokafka.conn", logging.DEBUG, "probe", outs=[out])
    assert len(out.lines) == 6


def test_information_repeats_only_word_for_word() -> None:
    clock = Clock()
    _, (out,) = handlers(clock)
    for p in (0, 1, 2, 3, 0, 1):
        emit("faust.stores", logging.INFO, "opening partition %s", p, outs=[out])
    assert len(out.lines) == 4


def test_one_filter_on_several_handlers_decides_once_per_record() -> None:
    clock = Clock()
    _, outs = handlers(clock, n=2)
    for _ in range(3):
        emit("aiokafka.conn", logging.ERROR, CONNECT, 1, "x", outs=outs)
    assert [len(o.lines) for o in outs] == [1, 1]


def test_install_and_log_summaries_go_through_the_loggers() -> None:
    out = Lines()
    repeat = install([out])
    clock = Clock()
    repeat.clock = clock
    logger = logging.getLogger("aiokafka.test_log_rate")
    logger.addHandler(out)
    logger.propagate = False
    try:
        for _ in range(4):
            logger.error("Failed fetch messages from %s", 111)
        clock.now = 40.0
        log_summaries(repeat)
    finally:
        logger.removeHandler(out)
    assert out.lines == [
        "aiokafka.test_log_rate ERROR Failed fetch messages from 111",
        "aiokafka.test_log_rate ERROR Failed fetch messages from 111"
        " (3 more like it in the last 40 s, not logged)",
    ]
