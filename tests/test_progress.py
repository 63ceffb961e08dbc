"""seqrl.progress: a tqdm bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from seqrl.progress import LineProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_log_gets_a_few_lines_not_one_per_update():
    log = io.StringIO()
    with progress(10_000, "collect pendulum", file=log) as bar:
        for _ in range(10_000):
            bar.update(1)
            bar.set_postfix(loss=0.5)  # a refresh per update must not print either
    out = lines(log)
    assert isinstance(bar, LineProgress)
    assert len(out) == 2, out  # the first line and the last (well within 30 s)
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert out[0].startswith("collect pendulum: 0/10000 step (0%)")
    assert out[-1].startswith("collect pendulum: 10000/10000 step (100%)")
    assert "step/s" in out[-1] and "loss=0.5" in out[-1]


def test_log_line_every_interval():
    interval = 0.1
    log = io.StringIO()
    start = time.monotonic()
    bar = progress(50, "train", unit="update", file=log, interval=interval)
    for _ in range(50):
        time.sleep(0.01)
        bar.update(1)
    bar.close()
    elapsed = time.monotonic() - start
    out = lines(log)
    # one line per interval at most, plus the first and the last; at least one between them
    assert 3 <= len(out) <= elapsed / interval + 2, (elapsed, out)
    counts = [int(line.split(": ")[1].split("/")[0]) for line in out]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 50
    assert all(" update (" in line for line in out)


def test_log_initial_count_and_past_the_total():
    log = io.StringIO()
    bar = progress(100, "collect", file=log, initial=40)
    bar.update(70)  # a rollout's last episodes can end past the steps asked for
    bar.close()
    bar.close()  # a second close writes nothing
    out = lines(log)
    assert len(out) == 2, out
    assert out[0].startswith("collect: 40/100 step (40%)")
    assert out[1].startswith("collect: 110 step [")  # no "?" total, no "0%"


def test_log_without_total():
    log = io.StringIO()
    with progress(None, "rollout", file=log) as bar:
        bar.update(5)
    assert lines(log)[-1].startswith("rollout: 5 step [")


def test_terminal_gets_a_tqdm_bar():
    term = Terminal()
    with progress(10, "train", file=term) as bar:
        bar.update(3)
        bar.set_postfix(loss=1.0)
    assert type(bar) is tqdm
    text = term.getvalue()
    assert "\r" in text and "3/10" in text and "|" in text  # a redrawn bar, not lines


def test_terminal_bar_not_left_when_asked():
    term = Terminal()
    with progress(10, "rollout", file=term, leave=False) as bar:
        bar.update(10)
    assert not term.getvalue().endswith("\n")  # cleared, not left on its own line


def test_disabled_writes_nothing():
    log, term = io.StringIO(), Terminal()
    for stream in (log, term):
        with progress(10, "x", file=stream, disable=True) as bar:
            bar.update(10)
            bar.set_postfix(a=1)
    assert log.getvalue() == "" and term.getvalue() == ""
