"""tqdm-shaped progress factories: one draws Streamlit progress bars, one records counts for a worker thread.

:class:`ingest.pipeline.IngestPipeline` and :class:`ragbot.evaluation.runner.EvalRunner` report
progress by calling a factory like tqdm: ``progress(iterable, desc=..., unit=...)`` wraps an
iterable, ``progress(total=..., desc=...)`` returns a bar with ``update(n)`` and ``close()``.
:class:`StreamlitProgress` draws one ``st.progress`` bar per ``desc`` inside a container, from the
script thread. :class:`RecordingProgress` is for work in a thread of its own (``ui.jobs``), which
must never call ``st.*``: it only counts, under a lock, and the page draws :meth:`~RecordingProgress.bars`
with :func:`draw_bars` whenever it polls.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

LABELS = {"files": "读取文件", "tokenise": "分词", "embed": "向量化", "q": "题"}


@dataclass(frozen=True)
class BarState:
    """One bar's counts at one moment."""

    desc: str
    unit: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


def bar_text(bar: BarState, labels: Mapping[str, str] | None = None) -> str:
    """``向量化：12/40 块``-style text for a bar (``desc`` and ``unit`` through ``labels``, escaped)."""
    from ui.render import md_escape

    labels = {**LABELS, **(labels or {})}
    unit = labels.get(bar.unit, "")
    return f"{md_escape(labels.get(bar.desc, bar.desc))}：{bar.done}/{bar.total}{(' ' + unit) if unit else ''}"


def draw_bars(bars: Sequence[BarState], labels: Mapping[str, str] | None = None) -> None:
    for bar in bars:
        st.progress(bar.fraction, text=bar_text(bar, labels))


class _Bar:
    """Counts for one ``desc``; ``changed`` is called (under ``lock``, if any) after every change."""

    def __init__(self, desc: str, unit: str, total: int, changed: Callable[[_Bar], None],
                 lock: Any = None) -> None:
        self.desc, self.unit, self.total, self.done = desc, unit, total, 0
        self._changed, self._lock = changed, lock or contextlib.nullcontext()

    def state(self) -> BarState:
        return BarState(self.desc, self.unit, self.done, self.total)

    def reset(self, total: int) -> None:
        with self._lock:
            self.total, self.done = total, 0
        self._changed(self)

    def wrap(self, items: list) -> Iterator:
        for item in items:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
        self._changed(self)

    def close(self) -> None:
        with self._lock:
            self.done = self.total
        self._changed(self)


class _Factory:
    """tqdm's calling convention; subclasses say how a new bar is made."""

    def __init__(self) -> None:
        self._bars: dict[str, _Bar] = {}

    def __call__(self, iterable: Iterable | None = None, *, desc: str = "", unit: str = "", total: int | None = None,
                 **_: Any) -> Any:
        if iterable is not None:
            items = list(iterable)
            return self._bar(desc, unit, len(items) if total is None else total).wrap(items)
        return self._bar(desc, unit, total or 0)

    def _bar(self, desc: str, unit: str, total: int) -> _Bar:
        if desc in self._bars:
            bar = self._bars[desc]
            bar.reset(total)
            return bar
        bar = self._bars[desc] = self._new_bar(desc, unit, total)
        return bar

    def _new_bar(self, desc: str, unit: str, total: int) -> _Bar:
        raise NotImplementedError

    def bars(self) -> list[BarState]:
        """Every bar so far, in the order they started."""
        return [bar.state() for bar in self._bars.values()]


class StreamlitProgress(_Factory):
    """``StreamlitProgress(container)`` → a factory to pass as ``progress=`` (from the script thread only).

    ``labels`` maps a ``desc`` to the Chinese text shown (unknown ones are shown as they are).
    """

    def __init__(self, container: Any = None, labels: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.container = container if container is not None else st.container()
        self.labels = {**LABELS, **(labels or {})}
        self._widgets: dict[str, Any] = {}

    def _new_bar(self, desc: str, unit: str, total: int) -> _Bar:
        with self.container:
            self._widgets[desc] = st.progress(0.0, text=bar_text(BarState(desc, unit, 0, total), self.labels))
        return _Bar(desc, unit, total, self._draw)

    def _draw(self, bar: _Bar) -> None:
        state = bar.state()
        self._widgets[bar.desc].progress(state.fraction, text=bar_text(state, self.labels))


class RecordingProgress(_Factory):
    """A factory for a worker thread: records each bar's counts (thread-safe) and draws nothing.

    >>> progress = RecordingProgress()
    >>> for _ in progress(range(3), desc="files", unit="file"):
    ...     pass
    >>> progress.bars()
    [BarState(desc='files', unit='file', done=3, total=3)]
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()  # the worker adds and moves bars while the page reads them

    def _bar(self, desc: str, unit: str, total: int) -> _Bar:
        with self._lock:
            return super()._bar(desc, unit, total)

    def _new_bar(self, desc: str, unit: str, total: int) -> _Bar:
        return _Bar(desc, unit, total, lambda _: None, self._lock)

    def bars(self) -> list[BarState]:
        with self._lock:
            return super().bars()
