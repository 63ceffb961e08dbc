"""Progress output that suits where it goes: a tqdm bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns many times a second; written to a file or a pipe (CI,
nohup, a job scheduler) that is one endless line or thousands of them. `progress` returns a tqdm bar
when the stream is a terminal, and otherwise a tqdm whose display is one plain line every `interval`
seconds (and a first and a last line), with the count, the total, the rate and the postfix:

    pendulum/expert: 4200/10000 step (42%) [00:30<00:41, 140.00step/s, loss=0.512]

Both are tqdm objects, so the caller uses tqdm's API in both cases: `update(n)`, `set_postfix(**kw)`,
`set_description`, `close()`, `with progress(...) as bar:`.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

INTERVAL = 30.0
"""seconds between two lines when the stream is not a terminal"""

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
"""a line with a total: tqdm's bar format without the bar (tqdm fills in the fields, formats times and rates)"""
COUNT_FORMAT = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"
"""a line without a total, or past it (a rollout that ends its last episodes beyond the steps asked for)"""


def is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress(total: int | float | None, desc: str = "", unit: str = "step", initial: int | float = 0,
             disable: bool = False, *, file: IO[str] | None = None, interval: float = INTERVAL,
             leave: bool = True) -> tqdm:
    """A progress display for `total` units: a tqdm bar if `file` (default: stderr) is a terminal, else
    a `LineProgress` writing one line every `interval` seconds. `leave=False` clears a terminal bar when
    it closes; a log always gets its last line. `disable=True` shows nothing (tqdm's no-op bar)."""
    stream = sys.stderr if file is None else file
    kwargs = dict(total=total, desc=desc, unit=unit, initial=initial)
    if disable:
        return tqdm(disable=True, **kwargs)
    if is_terminal(stream):
        return tqdm(file=stream, leave=leave, dynamic_ncols=True, **kwargs)
    return LineProgress(stream=stream, interval=interval, **kwargs)


class _Discard:
    """Where tqdm's own screen output goes in a LineProgress (carriage returns, clearing, newlines)."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


class LineProgress(tqdm):
    """tqdm counting, timing and formatting, shown as plain lines.

    Written here rather than taken from tqdm: tqdm has no line-per-interval mode (with a file it still
    redraws with carriage returns). tqdm documents `display` as the method to override in a subclass;
    this one writes `line()` (tqdm's `format_meter` with a bar-less format) as a line of its own to
    `stream`, at most once per `interval` seconds; the first display, at creation, and the last, at
    `close`, always. Every other write of tqdm goes to a sink, so nothing else reaches the log.
    """

    def __init__(self, *args, stream: IO[str], interval: float = INTERVAL, **kwargs):
        # set before tqdm's __init__, which displays the first line
        self.stream, self.interval = stream, interval
        self._last_line: float | None = None
        self._last_text = ""
        self._closing = False
        # mininterval: tqdm checks the clock in `update` only every `interval`; miniters=1: on every update
        # (no adaptive skipping); leave=True: close() displays the final state, not a clearing
        kwargs.update(file=_Discard(), mininterval=interval, miniters=1, leave=True, ascii=True)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its bar: nothing to clear in a log
            return False
        now = self._time()
        if not self._closing and self._last_line is not None and now - self._last_line < self.interval:
            return False  # a refresh between lines (set_postfix, set_description, refresh)
        self._last_line = now
        line = self.line() if msg is None else msg
        if self._closing and line == self._last_text:
            return False  # the last periodic line already said it
        self._last_text = line
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except ValueError:  # the stream was closed (interpreter shutdown)
            return False
        return True

    def line(self) -> str:
        """The current state as one line, formatted by tqdm."""
        meter = self.format_dict
        past = not meter["total"] or meter["n"] > meter["total"]
        text = self.format_meter(**{**meter, "bar_format": COUNT_FORMAT if past else LINE_FORMAT}).strip()
        return text.removeprefix(": ")  # no desc

    def close(self) -> None:
        self._closing = True
        super().close()
