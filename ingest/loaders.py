"""Read .md, .txt and .pdf files into text, page by page, with the reason when a file cannot be read.

Chinese text files in the wild come as UTF-8, UTF-8 with a BOM, GB18030/GBK (Windows), UTF-16
(Notepad's "Unicode") and, less often, Big5 (traditional Chinese) or Shift-JIS (Japanese). We check
these explicitly: strict UTF-8 first; legacy CJK encodings only when UTF-8 fails, and when more than
one of them decodes the bytes we let charset-normalizer rank the candidates. A general detector over
all encodings mislabels short Chinese texts (e.g. as Big5), so it is never asked an open question.

Every failure while loading one file, including MemoryError or RecursionError inside pypdf, becomes a
:class:`LoadError` with a reason, so one hostile or broken file never stops an ingest.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text"}
PDF_SUFFIXES = {".pdf": "pdf"}
SUPPORTED_SUFFIXES = {**TEXT_SUFFIXES, **PDF_SUFFIXES}


@dataclass(frozen=True)
class Page:
    """Text of one page (``number`` is 1-based), or of a whole text file (``number`` is None)."""

    number: int | None
    text: str


@dataclass(frozen=True)
class LoadedDocument:
    doc_id: str  # the file's absolute path: the key in the index manifest (may hold surrogates: it must find the file)
    source: str  # the name shown to users: path relative to the folder that was ingested, always printable UTF-8
    kind: str  # markdown, text or pdf
    pages: tuple[Page, ...]
    sha256: str
    encoding: str | None = None
    skipped_pages: tuple[int, ...] = ()  # PDF pages that had no extractable text
    notes: tuple[str, ...] = ()  # one English line per change made while loading (a cut line, unread pages, ...)


class LoadError(Exception):
    """A file could not be read; ``reason`` says why and what to do. ``path`` is printable (see :func:`display_path`)."""

    def __init__(self, path: os.PathLike[str] | str, reason: str) -> None:
        self.path = display_path(path)
        self.reason = _printable(reason)
        super().__init__(f"{self.path}: {self.reason}")


def display_path(path: os.PathLike[str] | os.PathLike[bytes] | str | bytes) -> str:
    r"""A path as printable UTF-8: undecodable bytes and control characters become ``\xNN`` escapes.

    File names from a Windows zip often hold GBK bytes that Python keeps as lone surrogates;
    printing those raises UnicodeEncodeError, so every name shown to users goes through here.

    >>> display_path(os.fsdecode(b"\xb2\xe2.md"))
    '\\xb2\\xe2.md'
    """
    return _printable(os.fsdecode(path))


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a newline or an ANSI escape in a name must not reach the terminal


def _printable(text: str) -> str:
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


# --- decoding text files -------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Legacy CJK encodings in order of preference when they fit equally well (our users mostly write simplified
# Chinese). cp950 and cp932 are the Windows supersets of Big5 and Shift-JIS, which is what such files are.
_LEGACY = ("gb18030", "cp950", "cp932")
_KANA = re.compile(r"[\u3041-\u30ff]")  # full-width kana: Shift-JIS bytes of GBK or Big5 text never decode to them
_HIGH_BYTES = bytes(range(0x80, 0x100))
# What real UTF-16 text is made of, and the spaces and punctuation it cannot do without; UTF-8 or ASCII
# bytes read as UTF-16 become CJK-looking characters but almost never separators ("Bush hid the facts").
_TEXTLIKE = re.compile(r"[\t\n\r\f\x20-\x7e\u00a0-\u052f\u2000-\u206f\u3000-\u30ff\u3400-\u9fff\uac00-\ud7a3\uff00-\uffef]")
_SEPARATOR = re.compile(r"[\t\n\r\f !-/:-@\[-`{-~\u3000-\u303f\uff01-\uff0f\uff1a-\uff20]")
_SAMPLE = 1 << 16  # bytes or characters looked at when judging a whole file


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes of a text file; return (text, encoding) or raise ValueError with the reason.

    >>> decode_text("量化把权重压缩到 4 位。".encode("gbk"))
    ('量化把权重压缩到 4 位。', 'gb18030')
    """
    text, encoding, _ = _decode(data)
    return text, encoding


def _decode(data: bytes) -> tuple[str, str, str | None]:
    """(text, encoding, note): the note says what was repaired, if anything."""
    bom_error = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding, None
            except UnicodeDecodeError as e:  # FF FE 00 00 is UTF-32 LE's mark, and also UTF-16 LE text starting with NUL
                bom_error = bom_error or (f"starts with a {encoding.upper()} byte-order mark but is not {encoding.upper()} "
                                          f"text ({e.reason} at byte {e.start:,}); re-save it as UTF-8")
    if bom_error:
        raise ValueError(bom_error)
    if b"\x00" in data:
        return _decode_with_nuls(data)
    try:
        return data.decode("utf-8"), "utf-8", None
    except UnicodeDecodeError as e:
        first_bad = e.start
    # A few bad bytes in otherwise UTF-8 text (a file cut mid-character, a bad copy) must not send it to
    # GB18030, which decodes it all into mojibake; GBK text seen as UTF-8 has more bad sequences than good.
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    non_ascii = len(text) - len(data.translate(None, _HIGH_BYTES))  # ASCII bytes decode one to one, even next to bad ones
    if bad * 21 <= non_ascii:  # at least 20 good non-ASCII characters per bad sequence
        return text, "utf-8", (f"{bad:,} invalid UTF-8 byte sequence(s) replaced by U+FFFD (the first at byte "
                               f"{first_bad:,}); re-save the file as UTF-8 to keep those characters")
    del text
    encoding = _pick_legacy(data)
    if encoding is None:
        raise ValueError("is neither UTF-8, UTF-16, GB18030/GBK, Big5 nor Shift-JIS text; convert it to UTF-8")
    return data.decode(encoding), encoding, None


def _decode_with_nuls(data: bytes) -> tuple[str, str, str | None]:
    core = data.rstrip(b"\x00")  # NUL padding after the text (a crash while saving) is not content
    stripped = core.replace(b"\x00", b"")
    nuls = len(core) - len(stripped)
    if nuls <= max(1, len(core) // 100):  # a stray NUL in UTF-8 text: its position says nothing about UTF-16
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            note = f"{len(data) - len(stripped):,} NUL byte(s) removed (the first at byte {data.index(0):,})"
            return text, "utf-8 (NUL bytes removed)", note
    if len(data) % 2 == 0:
        units = len(data) // 2
        even_nuls, odd_nuls = data[0::2].count(0), data[1::2].count(0)
        ascii_heavy = max(even_nuls, odd_nuls) >= units * 0.3  # ASCII in UTF-16 has a zero in every other byte
        order = ("utf-16-le", "utf-16-be") if odd_nuls >= even_nuls else ("utf-16-be", "utf-16-le")
        for encoding in order:
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            head = text[:_SAMPLE]
            odd = len(head) - _TEXTLIKE.subn("", head)[1]
            # the zeros vouch for ASCII only in the byte order where they are the high bytes (order[0])
            heavy = ascii_heavy and encoding == order[0]
            if odd <= len(head) * 0.02 and (heavy or _SEPARATOR.subn("", head)[1] >= max(2, len(head) * 0.02)):
                return text, encoding, None
    raise ValueError(f"looks like a binary file (it contains {data.count(0):,} NUL bytes and is neither UTF-8 nor "
                     "UTF-16 text); if it is text, re-save it as UTF-8")


def _pick_legacy(data: bytes) -> str | None:
    """The legacy CJK encoding that decodes ``data`` strictly and reads most like text, or None."""
    valid = []
    for encoding in _LEGACY:
        try:
            data.decode(encoding)  # thrown away: keeping three copies of a big file costs more than decoding twice
        except UnicodeDecodeError:
            continue
        valid.append(encoding)
    if len(valid) <= 1:
        return valid[0] if valid else None
    # Judge a head of the file cut after an ASCII byte below 0x30: no encoding here uses one inside a character.
    head = data[:_SAMPLE]
    cut = max(head.rfind(b) for b in b"\n\r\t .,")
    head = head[: cut + 1] if len(data) > _SAMPLE and cut >= 0 else data
    if "cp932" in valid:  # kana mark Japanese; short kana-only words score as well as their GB18030 reading
        kana_text = data[:_SAMPLE].decode("cp932", "ignore")
        non_ascii = len(kana_text) - len(kana_text.encode("ascii", "ignore"))
        if _KANA.subn("", kana_text)[1] >= 0.1 * non_ascii > 0:
            return "cp932"
    from charset_normalizer import from_bytes  # only here: most files never need it

    # threshold=1.0: rank only. Its "chaos" measure is relative; short genuine Chinese can score 0.5.
    chaos = {m.encoding: m.chaos for m in from_bytes(head, cp_isolation=valid, threshold=1.0, enable_fallback=False)}
    return min(valid, key=lambda e: chaos.get(e, 2.0))  # ties keep _LEGACY's order


# --- limits --------------------------------------------------------------------------------------

def _cut_long_lines(text: str, limit: int, where: str = "") -> tuple[str, list[str]]:
    """Cut every line longer than ``limit`` characters at ``limit``; notes name the first few.

    The scan finds only the long lines (``^`` fails at once inside a line, so it is linear) and copies
    the kept text once: a 20 MB one-line file costs one pass, not a list of pieces of the whole file.
    """
    if len(text) <= limit:
        return text, []
    parts: list[str] = []
    notes: list[str] = []
    pos = counted = cut = 0
    line = 1
    for m in re.finditer(rf"(?m)^[^\n]{{{limit + 1}}}", text):
        start = m.start()
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        line += text.count("\n", counted, start)
        counted = start
        parts.append(text[pos:start + limit])
        pos = end
        cut += 1
        if cut <= 3:
            notes.append(f"{where}line {line:,} cut at {limit:,} characters (it had {end - start:,}); "
                         "raise max_line_chars to keep more")
    if cut == 0:
        return text, []
    parts.append(text[pos:])
    if cut > 3:
        notes.append(f"{where}{cut - 3:,} more line(s) cut at {limit:,} characters; raise max_line_chars to keep more")
    return "".join(parts), notes


# --- the loader ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DocumentLoader:
    """Loads one file into a :class:`LoadedDocument`; raises :class:`LoadError` with a readable reason, never anything else.

    The limits keep one hostile file bounded in memory and time; what they cut is listed in ``notes``.

    >>> DocumentLoader(max_pdf_pages=50).run(Path("corpus/book.pdf"))  # doctest: +SKIP
    """

    max_line_chars: int = 20_000
    max_pdf_pages: int = 2_000
    max_pdf_chars: int = 5_000_000

    def __post_init__(self) -> None:
        for name in ("max_line_chars", "max_pdf_pages", "max_pdf_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least 1")

    def run(self, path: Path, root: Path | None = None) -> LoadedDocument:
        try:
            return self._load(Path(path), root)
        except LoadError:
            raise
        except MemoryError:
            raise LoadError(path, "ran out of memory while loading (too big or too complex); split it into smaller files") from None
        except RecursionError:
            raise LoadError(path, "is nested too deeply to parse (RecursionError); save a simpler copy") from None
        except Exception as e:  # a bug or a library's surprise on one file must not stop the other files
            raise LoadError(path, f"could not be loaded ({_why(e)})") from None

    def _load(self, path: Path, root: Path | None) -> LoadedDocument:
        kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise LoadError(path, f"unsupported file type {path.suffix!r}; ragbot reads {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LoadError(path, f"cannot be read ({e.strerror or e})") from None
        if not data or data.isspace():  # not data.strip(): that copies a big file
            raise LoadError(path, "is empty")
        source = _display_name(path, root)
        sha = hashlib.sha256(data).hexdigest()
        doc_id = str(path.resolve())
        if kind == "pdf":
            pages, skipped, notes = self._pdf_pages(path, data)
            return LoadedDocument(doc_id, source, kind, pages, sha, None, skipped, tuple(notes))
        try:
            text, encoding, note = _decode(data)
        except UnicodeError as e:  # a ValueError too, but its message alone does not say what to do
            raise LoadError(path, f"could not be decoded ({_why(e)}); re-save it as UTF-8") from None
        except ValueError as e:
            raise LoadError(path, str(e)) from None
        del data
        if _looks_binary(text):
            raise LoadError(path, "looks like a binary file (many control characters), not text")
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # returns the same string when there is nothing to replace
        if not text or text.isspace():
            raise LoadError(path, "has no text")
        text, notes = _cut_long_lines(text, self.max_line_chars)
        if note:
            notes.insert(0, note)
        return LoadedDocument(doc_id, source, kind, (Page(None, text),), sha, encoding, (), tuple(notes))

    def _pdf_pages(self, path: Path, data: bytes) -> tuple[tuple[Page, ...], tuple[int, ...], list[str]]:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        pages: list[Page] = []
        skipped: list[int] = []
        notes: list[str] = []
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):  # owner-password-only PDFs open with the empty password
                raise LoadError(path, "is an encrypted PDF that needs a password to open; save a decrypted copy "
                                      "(e.g. `qpdf --password=PASSWORD --decrypt in.pdf out.pdf`) and ingest that")
            total = len(reader.pages)
            chars = 0
            for number, page in enumerate(reader.pages, start=1):
                if number > self.max_pdf_pages:
                    notes.append(f"read {self.max_pdf_pages:,} of {total:,} pages (max_pdf_pages is "
                                 f"{self.max_pdf_pages:,}); raise max_pdf_pages to read the rest")
                    break
                text = (page.extract_text() or "").strip()
                if not text:
                    skipped.append(number)
                    continue
                text, cut = _cut_long_lines(text, self.max_line_chars, f"page {number}: ")
                notes += cut
                if chars + len(text) > self.max_pdf_chars:
                    text = text[: self.max_pdf_chars - chars]
                    notes.append(f"text cut at {self.max_pdf_chars:,} characters on page {number:,} of {total:,} "
                                 "(max_pdf_chars); raise max_pdf_chars to read the rest")
                    if text.strip():
                        pages.append(Page(number, text))
                    break
                chars += len(text)
                pages.append(Page(number, text))
        except (LoadError, MemoryError, RecursionError):
            raise
        except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
            raise LoadError(path, f"is not a readable PDF ({_why(e)})") from None
        except Exception as e:  # pypdf raises assorted errors on damaged files; one bad file must not stop the rest
            raise LoadError(path, f"could not be parsed as PDF ({_why(e)})") from None
        if not pages:
            raise LoadError(path, "has no extractable text (a scanned PDF?); run OCR on it first (e.g. ocrmypdf)")
        return tuple(pages), tuple(skipped), notes


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _looks_binary(text: str) -> bool:
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\r\n\t\f\v")
    return controls > max(1, len(text[:4096]) * 0.02)


def _display_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return display_path(path.resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            pass
    return display_path(path.name)


def discover(paths: list[Path]) -> tuple[list[tuple[Path, Path | None]], list[LoadError]]:
    """Expand folders into supported files (sorted, hidden ones skipped); return (file, root) pairs and errors."""
    found: list[tuple[Path, Path | None]] = []
    errors: list[LoadError] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES and not any(x.startswith(".") for x in rel.parts):
                    found.append((f, p))
        elif p.is_file():
            if p.suffix.lower() in SUPPORTED_SUFFIXES:
                found.append((p, None))
            else:
                errors.append(LoadError(p, f"unsupported file type {p.suffix!r}; ragbot reads {', '.join(sorted(SUPPORTED_SUFFIXES))}"))
        else:
            errors.append(LoadError(p, "does not exist"))
    return found, errors
