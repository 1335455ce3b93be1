"""A tqdm-shaped progress factory that draws Streamlit progress bars.

:class:`ingest.pipeline.IngestPipeline` and :class:`ragbot.evaluation.runner.EvalRunner` report
progress by calling a factory like tqdm: ``progress(iterable, desc=..., unit=...)`` wraps an
iterable, ``progress(total=..., desc=...)`` returns a bar with ``update(n)`` and ``close()``.
This one draws one ``st.progress`` bar per ``desc`` inside a container.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import streamlit as st

LABELS = {"files": "读取文件", "tokenise": "分词", "embed": "向量化", "q": "题"}


class StreamlitProgress:
    """``StreamlitProgress(container)`` → a factory to pass as ``progress=``.

    ``labels`` maps a ``desc`` to the Chinese text shown (unknown ones are shown as they are).
    """

    def __init__(self, container: Any = None, labels: Mapping[str, str] | None = None) -> None:
        self.container = container if container is not None else st.container()
        self.labels = {**LABELS, **(labels or {})}
        self._bars: dict[str, _Bar] = {}

    def __call__(self, iterable: Iterable | None = None, *, desc: str = "", unit: str = "", total: int | None = None,
                 **_: Any) -> Any:
        if iterable is not None:
            items = list(iterable)
            bar = self._bar(desc, unit, len(items) if total is None else total)
            return bar.wrap(items)
        return self._bar(desc, unit, total or 0)

    def _bar(self, desc: str, unit: str, total: int) -> _Bar:
        if desc in self._bars:
            bar = self._bars[desc]
            bar.reset(total)
            return bar
        with self.container:
            widget = st.progress(0.0, text=self._text(desc, 0, total, unit))
        bar = _Bar(widget, lambda done, tot: self._text(desc, done, tot, unit), total)
        self._bars[desc] = bar
        return bar

    def _text(self, desc: str, done: int, total: int, unit: str) -> str:
        from ui.render import md_escape

        unit_label = self.labels.get(unit, "")
        return f"{md_escape(self.labels.get(desc, desc))}：{done}/{total}{(' ' + unit_label) if unit_label else ''}"


class _Bar:
    def __init__(self, widget: Any, text: Any, total: int) -> None:
        self.widget, self.text, self.total, self.done = widget, text, total, 0

    def reset(self, total: int) -> None:
        self.total, self.done = total, 0
        self._draw()

    def wrap(self, items: list) -> Iterator:
        for item in items:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def close(self) -> None:
        self.done = self.total
        self._draw()

    def _draw(self) -> None:
        fraction = 1.0 if self.total <= 0 else min(1.0, self.done / self.total)
        self.widget.progress(fraction, text=self.text(self.done, self.total))
