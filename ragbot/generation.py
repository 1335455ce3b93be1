"""The generation stage: ``Generator(chat_model).run(question, passages) -> Answer``.

It builds the prompt (:mod:`ragbot.prompt`), streams the model's reply through the citation filter
(:mod:`ragbot.citations`: markers cleaned and re-pointed as they appear) and turns it into an
:class:`~ragbot.types.Answer`: only citations of given passages, or exactly the refusal phrase.

Streaming returns an :class:`AnswerStream`: iterate it for the text as it is generated, then read
``.answer``. The streamed text is the final answer's text, except where the final answer differs for a
reason only the whole reply shows: a refusal (any text becomes exactly the refusal phrase; so does a reply
that only says the question back, which the in-process backends' decoding rules prevent) or an answer
that cited nothing and got citations by alignment. ``AnswerStream.rewritten`` says so, and a caller
that showed the stream then shows the final text instead (the web app and ``ragbot ask`` both do).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator as Gen, Iterator, Sequence

from ragbot.citations import (CitationStreamFilter, align_citations, cites_nothing, clean_citations, is_refusal,
                              says_back)
from ragbot.llm.base import ChatModel
from ragbot.prompt import build_messages
from ragbot.settings import REFUSAL
from ragbot.types import Answer, Citation, ScoredChunk


class AnswerStream:
    """The text of an answer as it is generated; ``.answer`` is the final :class:`Answer`.

    ``for piece in stream: show(piece)`` then ``stream.answer``; reading ``.answer`` first runs the rest of
    the generation without showing it. ``pieces`` is a generator that yields text and returns the Answer.
    """

    def __init__(self, pieces: Gen[str, None, Answer]) -> None:
        self._pieces = pieces
        self._answer: Answer | None = None
        self._shown: list[str] = []

    @classmethod
    def of(cls, answer: Answer, shown: str = "") -> AnswerStream:
        """A stream that shows ``shown`` (e.g. the refusal phrase) and ends with a ready ``answer``."""
        def pieces() -> Gen[str, None, Answer]:
            if shown:
                yield shown
            return answer

        return cls(pieces())

    def __iter__(self) -> Iterator[str]:
        while (piece := self._next()) is not None:
            self._shown.append(piece)
            yield piece
        return self._answer

    def _next(self) -> str | None:
        """The next piece, or None once the generator has returned its Answer (kept in ``_answer``)."""
        if self._answer is not None:
            return None
        try:
            return next(self._pieces)
        except StopIteration as done:
            assert done.value is not None, "the answer generator returned no Answer"
            self._answer = done.value
            return None

    @property
    def answer(self) -> Answer:
        while self._next() is not None:  # run the rest without showing it
            pass
        return self._answer

    @property
    def shown(self) -> str:
        """The text yielded so far."""
        return "".join(self._shown)

    @property
    def rewritten(self) -> bool:
        """Whether the final answer's text differs from what was streamed (refusal, or citations added by
        alignment), so a caller that showed the stream must show ``answer.text`` in its place."""
        return self.answer.text.strip() != self.shown.strip()

    def then(self, change: Callable[[Answer], Answer]) -> AnswerStream:
        """The same text, with ``change`` applied to the final answer (the pipeline adds retrieval and timings)."""
        def pieces() -> Gen[str, None, Answer]:
            answer = yield from self
            return change(answer)

        return AnswerStream(pieces())


def finalize(question: str, raw: str, passages: Sequence[ScoredChunk], timings: dict[str, float] | None = None,
             *, align: bool = True, repoint: bool = True) -> Answer:
    """Turn the model's whole raw text into an :class:`Answer`, exactly as streaming it would.

    With ``align``, an answer that cites nothing gets citations by lexical alignment to the passages;
    with ``repoint``, a citation whose passage does not support its sentence moves to one that does.
    """
    filt = CitationStreamFilter(len(passages), passages if repoint else None)
    filt.feed(raw)
    filt.flush()
    return _answer(question, raw, filt, passages, timings or {}, align=align)


def _answer(question: str, raw: str, filt: CitationStreamFilter, passages: Sequence[ScoredChunk],
            timings: dict[str, float], *, align: bool, echo: bool = True) -> Answer:
    """The :class:`Answer` for ``raw``, whose cleaned (and re-pointed) text ``filt`` has shown. With ``echo``
    (the grounded prompt), a reply that only says the question back is refused as well."""
    text = filt.text.strip()
    echo = echo and says_back(question, text)
    if is_refusal(raw) or cites_nothing(text) or echo:
        return Answer(question, REFUSAL, True, (), tuple(passages), raw, filt.invalid,
                      refused_by="echo" if echo else "model", timings_ms=timings)
    aligned = 0
    cited = clean_citations(text, len(passages)).cited
    if align and not cited:
        text, aligned = align_citations(text, passages)
        cited = clean_citations(text, len(passages)).cited
    citations = tuple(Citation(n, passages[n - 1].chunk) for n in cited)
    return Answer(question, text, False, citations, tuple(passages), raw, filt.invalid, aligned,
                  repointed_citations=filt.repointed, timings_ms=timings)


class Generator:
    """``Generator(chat_model).run(question, passages) -> Answer``; ``stream`` returns an :class:`AnswerStream`."""

    def __init__(self, chat_model: ChatModel, *, style: str = "grounded", max_new_tokens: int = 256,
                 temperature: float = 0.0, max_passage_chars: int = 300, align_citations: bool = True,
                 repoint_citations: bool = True, valid_markers: bool = True) -> None:
        self.chat_model = chat_model
        self.style, self.max_new_tokens, self.temperature = style, max_new_tokens, temperature
        self.max_passage_chars = max_passage_chars
        self.align = align_citations and style == "grounded"
        self.repoint = repoint_citations and style == "grounded"
        self.valid_markers = valid_markers and style == "grounded"
        self.echo = style == "grounded"  # the reply may not just say the question back

    def run(self, question: str, passages: Sequence[ScoredChunk]) -> Answer:
        return self.stream(question, passages).answer

    def stream(self, question: str, passages: Sequence[ScoredChunk]) -> AnswerStream:
        """Cleaned text pieces as they are generated, then the final :class:`Answer` (``.answer``)."""
        return AnswerStream(self._pieces(question, passages))

    def _pieces(self, question: str, passages: Sequence[ScoredChunk]) -> Gen[str, None, Answer]:
        messages = build_messages(question, passages, self.style, self.max_passage_chars)
        filt = CitationStreamFilter(len(passages), passages if self.repoint else None)
        raw: list[str] = []
        t0 = time.perf_counter()
        first = None
        citable = len(passages) if self.valid_markers else 0
        deltas = self.chat_model.stream(messages, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                        citable=citable, question=question if self.echo else "")
        try:
            while True:
                try:
                    delta = next(deltas)
                except StopIteration as stop:  # a backend's stream may return why it stopped ("length": cut short)
                    finish = stop.value if isinstance(stop.value, str) else ""
                    break
                if first is None:
                    first = time.perf_counter()
                raw.append(delta)
                shown = filt.feed(delta)
                if shown:
                    yield shown
        finally:  # an answer abandoned half-way frees what its backend holds (a server slot, a connection)
            close = getattr(deltas, "close", None)
            if close is not None:
                close()
        tail = filt.flush()
        if tail:
            yield tail
        end = time.perf_counter()
        timings = {"first_token_ms": ((first or end) - t0) * 1000, "generate_ms": (end - t0) * 1000}
        answer = _answer(question, "".join(raw), filt, passages, timings, align=self.align, echo=self.echo)
        return dataclasses.replace(answer, finish_reason=finish) if finish else answer

