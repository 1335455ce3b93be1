"""Turning answers and passages into Markdown/HTML that is safe to show.

Everything that comes from a document, a model or a user is untrusted. Markdown goes through
:func:`md_escape` (Streamlit never renders raw HTML from ``st.markdown``, but links, images,
maths and colour directives would still be interpreted); HTML is built here from fixed tags with
every untrusted piece passed through :func:`html.escape`, and shown with ``st.html``, which
sanitises it once more with DOMPurify. Nothing is ever passed with ``unsafe_allow_html``.

Citations: each ``[n]`` in an answer becomes a link whose tooltip shows the source and whose
target is the passage card ``#cite-<turn>-<n>`` in the sources list under the answer; following
the link scrolls to the card and opens it (Chromium expands a closed ``<details>`` on fragment
navigation), and clicking the card's title opens it too. The card shows the passage inside the
surrounding text of its page, the chunk tinted and its supporting sentences highlighted.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragbot.citations import claims_by_citation, support_spans
from ragbot.types import Answer, Chunk, ScoredChunk

if TYPE_CHECKING:
    import pandas as pd

    from ragbot.store import IndexStore

_MD_ALL = re.compile(r"[\\`*_{}\[\]()<>#+\-.!|~$:&@]")
# keeps bold, lists and code, neutralises links, HTML and maths (and the ":" of "://", the "@" of an e-mail address)
_MD_ANSWER = re.compile(r"[\\\[\]<>$&~|]|:(?=//)|(?<=\u2060)@")
# Streamlit's Markdown (remark-gfm) turns bare http(s)://…, www.… and e-mail addresses into links, and it does so
# on the *unescaped* text, after parsing: "http\\://x" is still linked. A WORD JOINER (invisible, no line break)
# after the scheme, after "www" and before "@" is what no autolink pattern matches across.
_AUTOLINK = re.compile(r"https?(?=://)|www(?=\.)|[-.\w+](?=@)", re.IGNORECASE | re.ASCII)
_WJ = "\u2060"
_ESCAPED_CITE = re.compile(r"\\\[(\d{1,3})\\\]")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)  # a fenced block (to the end when unclosed), an inline span

TIMING_LABELS = {
    "rewrite_ms": "问题改写", "dense_ms": "向量检索 (dense)", "bm25_ms": "BM25 检索", "rerank_ms": "重排",
    "retrieval_ms": "检索合计", "first_token_ms": "首字延迟", "generate_ms": "生成", "total_ms": "总计",
}
STAGE_LABELS = {"dense": "Dense 向量", "bm25": "BM25", "fused": "RRF 融合", "reranked": "重排"}


def no_autolinks(text: str) -> str:
    """``text`` with a word joiner where a bare URL or e-mail address would become a link (it looks the same)."""
    return _AUTOLINK.sub(lambda m: m[0] + _WJ, text or "")


def md_escape(text: str) -> str:
    """Markdown that displays ``text`` literally (every Markdown punctuation backslash-escaped, line breaks kept,
    no bare URL or e-mail address clickable)."""
    return _MD_ALL.sub(r"\\\g<0>", no_autolinks(text)).replace("\n", "  \n")


def md_code(text: str) -> str:
    """``text`` as inline code: shown literally (nothing inside code is interpreted), backticks fenced off."""
    flat = re.sub(r"\s+", " ", text or "")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", flat)), default=0) + 1)
    return f"{fence} {flat} {fence}" if "`" in flat else f"`{flat}`"


def md_escape_answer(text: str) -> str:
    """An answer as Markdown: bold/lists survive, but no link (bare URLs included), image, HTML, entity or formula
    can be formed. Code (a fenced block, to its end if unclosed, or an inline span) is left as written: Markdown
    shows it literally, so escaping it would show the backslashes (``\\[1,2,3\\]`` in a quoted snippet)."""
    text = text or ""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out += [_escape_prose(text[pos:m.start()]), m.group(0)]
        pos = m.end()
    out.append(_escape_prose(text[pos:]))
    return "".join(out)


def _escape_prose(text: str) -> str:
    return _MD_ANSWER.sub(r"\\\g<0>", no_autolinks(text)).replace("\n", "  \n")


def where(chunk: Chunk) -> str:
    """``file · 第3页 · 一级标题 › 二级标题`` (plain text: escape it for the place it is shown)."""
    parts = [chunk.source]
    if chunk.page:
        parts.append(f"第{chunk.page}页")
    if chunk.heading_path:
        parts.append(" › ".join(chunk.heading_path))
    return " · ".join(parts)


def excerpt(text: str, limit: int = 120) -> str:
    flat = re.sub(r"\s+", " ", text or "").strip()
    return flat if len(flat) <= limit else flat[:limit] + "…"


def anchor_id(turn: int | str, n: int) -> str:
    return f"cite-{turn}-{n}"


# ---------------------------------------------------------------- answer text with citation links


def answer_markdown(answer: Answer, turn: int | str) -> str:
    """The answer as safe Markdown with every valid ``[n]`` turned into a link to its passage card, with a tooltip."""
    by_n = {c.n: c.chunk for c in answer.citations}
    for n, hit in enumerate(answer.passages, start=1):
        by_n.setdefault(n, hit.chunk)

    def link(m: re.Match[str]) -> str:
        n = int(m.group(1))
        chunk = by_n.get(n)
        if chunk is None:
            return m.group(0)
        # one line: a title line starting with "#" or "-" would start a new Markdown block and break the link
        body = excerpt(re.sub(r"(?m)^\s*#{1,6}\s*", "", chunk.text), 160)
        title = f"{where(chunk)}：{body}".replace("\\", "\\\\").replace('"', '\\"')
        return f'[\\[{n}\\]](#{anchor_id(turn, n)} "{title}")'

    return _ESCAPED_CITE.sub(link, md_escape_answer(answer.text))


# ---------------------------------------------------------------- the passage in its context


def passage_context(store: IndexStore | None, chunk: Chunk, margin: int = 160) -> tuple[str, str]:
    """Up to ``margin`` characters of the page text before and after ``chunk``, rebuilt from neighbouring chunks.

    Every chunk is an exact slice ``page_text[start:end]``, so overlapping neighbours give the
    surrounding text back; gaps (whitespace dropped between sections) become a line break.
    """
    if store is None or chunk.end <= chunk.start:
        return "", ""
    lo, hi = max(0, chunk.start - margin), chunk.end + margin
    chars: dict[int, str] = {}
    for c in store.chunks_of(chunk.doc_id):
        if c.page != chunk.page or c.end <= lo or c.start >= hi:
            continue
        for i in range(max(c.start, lo), min(c.end, hi)):
            chars[i] = c.text[i - c.start]

    def span(a: int, b: int) -> str:
        out, gap = [], False
        for i in range(a, b):
            ch = chars.get(i)
            if ch is None:
                gap = True
                continue
            if gap and out:
                out.append("\n")
            gap = False
            out.append(ch)
        return "".join(out)

    before, after = span(lo, chunk.start), span(chunk.end, hi)
    if before and chunk.start - 1 not in chars:  # text dropped between sections was a line break
        before += "\n"
    if after and chunk.end not in chars:
        after = "\n" + after
    if lo > 0 and before:
        before = "…" + before
    if after and (chunk.end + margin) < max((c.end for c in store.chunks_of(chunk.doc_id) if c.page == chunk.page),
                                            default=0):
        after = after + "…"
    return before, after


def highlighted_html(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` escaped, with ``spans`` wrapped in ``<mark>``."""
    out, pos = [], 0
    for start, end in spans:
        if start < pos:
            continue
        out.append(html.escape(text[pos:start]))
        out.append('<mark style="background:rgba(250,204,21,.6);color:inherit;border-radius:3px;padding:0 1px">'
                   f"{html.escape(text[start:end])}</mark>")
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


@dataclass(frozen=True)
class SourceView:
    """One citation card: passage ``n`` with its context and the spans of it to highlight."""

    n: int
    chunk: Chunk
    before: str = ""
    after: str = ""
    spans: tuple[tuple[int, int], ...] = ()
    score: float | None = None


def source_views(answer: Answer, store: IndexStore | None, margin: int = 160) -> list[SourceView]:
    """Cards for the passages the answer cites, in citation order."""
    claims = claims_by_citation(answer.text)
    scores = {n: hit.score for n, hit in enumerate(answer.passages, start=1)}
    views = []
    for c in answer.citations:
        before, after = passage_context(store, c.chunk, margin)
        views.append(SourceView(c.n, c.chunk, before, after, tuple(support_spans(c.chunk.text, claims.get(c.n, []))),
                                scores.get(c.n)))
    return views


def sources_html(views: Sequence[SourceView], turn: int | str) -> str:
    """The sources list under an answer: one collapsible card per citation (all text escaped)."""
    cards = []
    for v in views:
        body = (f'<span style="opacity:.55">{html.escape(v.before)}</span>'
                f'<span style="background:rgba(250,204,21,.16);border-radius:3px">{highlighted_html(v.chunk.text, v.spans)}</span>'
                f'<span style="opacity:.55">{html.escape(v.after)}</span>')
        cards.append(
            '<details style="border:1px solid rgba(128,128,128,.3);border-radius:8px;padding:6px 12px;margin:6px 0">'
            f'<summary style="cursor:pointer"><b>[{v.n}]</b> {html.escape(where(v.chunk))}</summary>'
            f'<div id="{anchor_id(turn, v.n)}" class="rb-passage" style="margin-top:8px;white-space:pre-wrap;'
            f'line-height:1.75;font-size:.92rem">{body}</div>'
            '<div style="font-size:.75rem;opacity:.6;margin-top:6px">浅色底：引用的片段；黄色高亮：与回答中引用它的句子最相符的内容</div>'
            "</details>"
        )
    return ('<div class="rb-sources"><div style="font-size:.85rem;opacity:.7;margin:2px 0">📎 来源</div>'
            + "".join(cards) + "</div>")


# ---------------------------------------------------------------- debug tables


def candidates_frame(hits: Sequence[ScoredChunk]) -> pd.DataFrame:
    """One row per candidate: rank, score, file, page, heading, excerpt."""
    import pandas as pd

    return pd.DataFrame([{"#": i, "得分": round(float(h.score), 4), "文件": h.chunk.source,
                          "页": str(h.chunk.page) if h.chunk.page else "", "标题": h.chunk.heading,
                          "片段": excerpt(h.chunk.text, 80)} for i, h in enumerate(hits, start=1)],
                        columns=["#", "得分", "文件", "页", "标题", "片段"])


def timings_frame(timings: Mapping[str, Any]) -> pd.DataFrame:
    import pandas as pd

    order = list(TIMING_LABELS)
    keys = sorted(timings, key=lambda k: order.index(k) if k in order else len(order))
    return pd.DataFrame([{"阶段": TIMING_LABELS.get(k, k), "毫秒": round(float(timings[k]), 1)} for k in keys],
                        columns=["阶段", "毫秒"])
