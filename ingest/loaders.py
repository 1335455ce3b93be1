"""Read .md, .txt and .pdf files into text, page by page, with the reason when a file cannot be read.

Chinese text files in the wild come as UTF-8, UTF-8 with a BOM, GB18030/GBK (Windows) or
UTF-16 (Notepad's "Unicode"); we detect these explicitly rather than guess with a general
detector, which mislabels short Chinese texts (e.g. as Big5).
"""

from __future__ import annotations

import codecs
import hashlib
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
    doc_id: str  # the file's absolute path: the key in the index manifest
    source: str  # the name shown to users: path relative to the folder that was ingested
    kind: str  # markdown, text or pdf
    pages: tuple[Page, ...]
    sha256: str
    encoding: str | None = None
    skipped_pages: tuple[int, ...] = ()  # PDF pages that had no extractable text


class LoadError(Exception):
    """A file could not be read; ``reason`` says why and what to do."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes of a text file; return (text, encoding) or raise ValueError with the reason."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding), encoding
    if b"\x00" in data:
        encoding = _guess_utf16_without_bom(data)
        if encoding is None:
            raise ValueError("looks like a binary file (it contains NUL bytes), not text")
        return data.decode(encoding), encoding
    for encoding in ("utf-8", "gb18030"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise ValueError("is neither UTF-8, UTF-16 nor GB18030/GBK text; convert it to UTF-8")


def _guess_utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text without BOM has NULs in the high byte of most ASCII characters; binary data does not decode."""
    if len(data) % 2:
        return None
    even_nuls, odd_nuls = data[0::2].count(0), data[1::2].count(0)
    encoding = "utf-16-le" if odd_nuls > even_nuls else "utf-16-be"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return None
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\r\n\t\f")
    return encoding if controls <= len(text) * 0.01 else None


def _looks_binary(text: str) -> bool:
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\r\n\t\f\v")
    return controls > max(1, len(text[:4096]) * 0.02)


class DocumentLoader:
    """Loads one file into a :class:`LoadedDocument`; raises :class:`LoadError` with a readable reason."""

    def run(self, path: Path, root: Path | None = None) -> LoadedDocument:
        path = Path(path)
        kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise LoadError(path, f"unsupported file type {path.suffix!r}; ragbot reads {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LoadError(path, f"cannot be read ({e.strerror or e})") from None
        if not data.strip():
            raise LoadError(path, "is empty")
        source = _display_name(path, root)
        sha = hashlib.sha256(data).hexdigest()
        doc_id = str(path.resolve())
        if kind == "pdf":
            pages, skipped = self._pdf_pages(path, data)
            return LoadedDocument(doc_id, source, kind, pages, sha, None, skipped)
        try:
            text, encoding = decode_text(data)
        except ValueError as e:
            raise LoadError(path, str(e)) from None
        if _looks_binary(text):
            raise LoadError(path, "looks like a binary file (many control characters), not text")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            raise LoadError(path, "has no text")
        return LoadedDocument(doc_id, source, kind, (Page(None, text),), sha, encoding)

    @staticmethod
    def _pdf_pages(path: Path, data: bytes) -> tuple[tuple[Page, ...], tuple[int, ...]]:
        import io

        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise LoadError(path, "is an encrypted PDF; save a decrypted copy (e.g. `qpdf --decrypt in.pdf out.pdf`)")
            pages, skipped = [], []
            for number, page in enumerate(reader.pages, start=1):
                text = (page.extract_text() or "").strip()
                if text:
                    pages.append(Page(number, text))
                else:
                    skipped.append(number)
        except LoadError:
            raise
        except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
            raise LoadError(path, f"is not a readable PDF ({type(e).__name__}: {e})") from None
        except Exception as e:  # pypdf raises assorted errors on damaged files; one bad file must not stop the rest
            raise LoadError(path, f"could not be parsed as PDF ({type(e).__name__}: {e})") from None
        if not pages:
            raise LoadError(path, "has no extractable text (a scanned PDF?); run OCR on it first (e.g. ocrmypdf)")
        return tuple(pages), tuple(skipped)


def _display_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.name


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
