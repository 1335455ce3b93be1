"""Split loaded documents into chunks that know their file, page, heading path and character offsets.

Markdown is split at headers first (LangChain's whitespace-preserving Markdown splitter), then
long sections are split recursively on paragraph breaks, line breaks and Chinese sentence ends
(。！？；), so a chunk rarely cuts a sentence. Every chunk's text is an exact slice of its page,
which lets the UI show and highlight a citation in context.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from ingest.loaders import LoadedDocument
from ragbot.errors import ConfigError
from ragbot.store import chunking_spec
from ragbot.types import Chunk

log = logging.getLogger(__name__)

# Paragraphs, lines, then sentence ends (Chinese and Western), then clauses, then anything.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", "! ", "? ", "; ", ". ", "，", ", ", " ", ""]
_RULE_LINES = re.compile(r"^(\*\*\*+|---+|___+)[ \t]*$", re.MULTILINE)  # horizontal rules the splitter drops


@dataclass(frozen=True)
class Section:
    start: int
    end: int
    heading_path: tuple[str, ...]
    header_only: bool = False


class Chunker:
    """``Chunker(400, 80).run(doc)`` → chunks of at most ~400 characters overlapping by up to 80.

    ``mode="fixed"`` ignores structure and cuts plain character windows (the textbook baseline).
    """

    def __init__(self, chunk_size: int = 400, chunk_overlap: int = 80, mode: str = "markdown") -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size ({chunk_size}) must be at least 1")
        if not 0 <= chunk_overlap < chunk_size:
            raise ConfigError(f"chunk_overlap ({chunk_overlap}) must be between 0 and chunk_size ({chunk_size}) - 1")
        if mode not in ("markdown", "fixed"):
            raise ConfigError(f"chunker mode {mode!r} must be 'markdown' or 'fixed'")
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.chunk_size, self.chunk_overlap, self.mode = chunk_size, chunk_overlap, mode
        separators = [""] if mode == "fixed" else SEPARATORS
        self._splitter = RecursiveCharacterTextSplitter(
            separators=separators, keep_separator="end", chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            add_start_index=True, strip_whitespace=mode != "fixed",
        )

    @property
    def spec(self) -> dict[str, object]:
        """What the index manifest records: change any of it and the index must be rebuilt."""
        return chunking_spec(self.chunk_size, self.chunk_overlap, self.mode)  # bump CHUNKER_VERSION there

    def run(self, doc: LoadedDocument) -> list[Chunk]:
        chunks: list[Chunk] = []
        # 64 bits of the path's hash: ids stay unique across ~10^9 files; surrogateescape keeps a path with
        # undecodable bytes (a zip made on Windows) hashable instead of failing the whole ingest
        doc_key = hashlib.sha256(doc.doc_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        for page in doc.pages:
            if self.mode == "markdown" and doc.kind == "markdown":
                sections = markdown_sections(page.text)
            else:
                sections = [Section(0, len(page.text), ())]
            for section in sections:
                for start, end in self._split(page.text, section):
                    text = page.text[start:end]
                    chunks.append(Chunk(
                        id=f"{doc_key}-{len(chunks):04d}", doc_id=doc.doc_id, text=text, source=doc.source,
                        page=page.number, heading_path=section.heading_path, start=start, end=end,
                        content_hash=hashlib.sha256(text.encode()).hexdigest()[:16],
                    ))
        return chunks

    def _split(self, text: str, section: Section) -> list[tuple[int, int]]:
        body = text[section.start:section.end]
        if self.mode != "fixed" and len(body.strip()) <= self.chunk_size:
            lead = len(body) - len(body.lstrip())
            return [(section.start + lead, section.start + len(body.rstrip()))] if body.strip() else []
        spans = []
        for piece in self._splitter.create_documents([body]):
            content, start = piece.page_content, piece.metadata["start_index"]
            if body[start:start + len(content)] != content:  # LangChain's offset guess can miss on repeated text
                start = body.find(content)
            spans.append((section.start + start, section.start + start + len(content)))
        return spans


def markdown_sections(text: str) -> list[Section]:
    """Header-delimited sections of a Markdown page with exact offsets.

    LangChain's ``ExperimentalMarkdownSyntaxTextSplitter`` keeps whitespace verbatim, so each of its
    pieces can be located in the text. It also cuts at code fences and horizontal rules; pieces under
    the same heading are merged back while they fit, and a heading with no body of its own is joined
    to what follows it. If the splitter drops text (it does for an unclosed code fence), we fall back
    to one section so that nothing is lost.
    """
    from langchain_text_splitters import ExperimentalMarkdownSyntaxTextSplitter

    docs = ExperimentalMarkdownSyntaxTextSplitter(strip_headers=False).split_text(text)
    sections: list[Section] = []
    cursor = 0
    for d in docs:
        start = text.find(d.page_content, cursor)
        if start < 0:
            log.warning("Markdown splitter output not found in the text; splitting this page without headings")
            return [Section(0, len(text), ())]
        cursor = end = start + len(d.page_content)
        path = tuple(d.metadata[k] for k in sorted(d.metadata) if k.startswith("Header ") and d.metadata[k])
        lines = [ln for ln in d.page_content.splitlines() if ln.strip()]
        sections.append(Section(start, end, path, header_only=all(ln.lstrip().startswith("#") for ln in lines)))
    gaps = zip([0] + [s.end for s in sections], [s.start for s in sections] + [len(text)])
    if any(_RULE_LINES.sub("", text[a:b]).strip() for a, b in gaps):
        log.warning("Markdown splitter dropped text (unclosed code fence?); splitting this page without headings")
        return [Section(0, len(text), ())]
    return _merge_sections(sections)


def _merge_sections(sections: list[Section]) -> list[Section]:
    merged: list[Section] = []
    for s in sections:
        prev = merged[-1] if merged else None
        if prev is not None and prev.header_only:
            # a bare heading becomes the first line of what follows it, which keeps the deeper heading path
            merged[-1] = Section(prev.start, s.end, s.heading_path, s.header_only)
        elif prev is not None and prev.heading_path == s.heading_path:
            merged[-1] = Section(prev.start, s.end, s.heading_path)
        else:
            merged.append(s)
    return merged
