"""``ragbot ingest``: files → chunks → vectors → FAISS + BM25 + chunk store, incrementally.

A re-run compares each file's sha256 with the manifest: unchanged files are skipped, changed
files have their old chunks replaced, new files are added, and (with ``prune``) files that
vanished from the ingested folders are removed. Bad files are reported and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.chunking import Chunker
from ingest.loaders import DocumentLoader, LoadedDocument, LoadError, discover
from ragbot.embedder import Embedder
from ragbot.errors import IndexMismatchError
from ragbot.store import FileRecord, IndexSpec, IndexStore, bm25_tokens
from ragbot.types import Chunk

ProgressFactory = Callable[..., object]


@dataclass(frozen=True)
class FileFailure:
    path: str
    reason: str


@dataclass(frozen=True)
class IngestReport:
    index_path: str
    files_seen: int = 0
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[FileFailure, ...] = ()
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False only when nothing could be ingested: every file failed, or there were no files."""
        return bool(self.added or self.changed or self.unchanged or self.removed)

    def summary(self) -> str:
        lines = [
            f"Index: {self.index_path}",
            f"Files: {self.files_seen} seen, {len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, {len(self.failed)} failed",
            f"Chunks: +{self.chunks_added} -{self.chunks_removed}, {self.chunks_total} in the index",
            "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ]
        lines += [f"  FAILED {f.path}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


class IngestPipeline:
    """``IngestPipeline(embedder, chunker).run([Path("corpus")], index_path)`` → :class:`IngestReport`."""

    def __init__(self, embedder: Embedder, chunker: Chunker, loader: DocumentLoader | None = None,
                 progress: ProgressFactory | None = None) -> None:
        self.embedder = embedder
        self.chunker = chunker
        self.loader = loader or DocumentLoader()
        self.progress = progress or _no_progress

    def spec(self) -> IndexSpec:
        return IndexSpec(self.embedder.name, self.embedder.dim, self.chunker.spec)

    def run(self, paths: Sequence[Path], index_path: Path, *, prune: bool = False, rebuild: bool = False) -> IngestReport:
        index_path = Path(index_path)
        with IndexStore.writer_lock(index_path):
            return self._run([Path(p) for p in paths], index_path, prune=prune, rebuild=rebuild)

    def _run(self, paths: list[Path], index_path: Path, *, prune: bool, rebuild: bool) -> IngestReport:
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        spec = self.spec()  # loads the embedder: needed anyway to compare with the index
        seconds["model"] = time.perf_counter() - t0

        t = time.perf_counter()
        if IndexStore.exists(index_path) and not rebuild:
            store = IndexStore.load(index_path)
            diffs = spec.differences(store.manifest.spec)
            if diffs:
                raise IndexMismatchError(
                    f"index at {index_path} was built with other settings: {'; '.join(diffs)}. "
                    f"Re-run with --rebuild to re-ingest everything with the current settings."
                )
        else:
            store = IndexStore.empty(spec)
        files, errors = discover(paths)
        failed = [FileFailure(e.path, e.reason) for e in errors]
        added, changed, unchanged = [], [], []
        to_index: list[tuple[LoadedDocument, list[Chunk]]] = []
        for path, root in self.progress(files, desc="files", unit="file"):
            try:
                doc = self.loader.run(path, root)
            except LoadError as e:
                failed.append(FileFailure(e.path, e.reason))
                continue
            old = store.manifest.files.get(doc.doc_id)
            if old is not None and old.sha256 == doc.sha256 and old.source == doc.source:
                unchanged.append(doc.source)
                continue
            chunks = self.chunker.run(doc)
            if not chunks:
                failed.append(FileFailure(str(path), "produced no chunks (no text after splitting)"))
                continue
            (changed if old is not None else added).append(doc.source)
            to_index.append((doc, chunks))
        seconds["load+chunk"] = time.perf_counter() - t

        t = time.perf_counter()
        removed_files: list[str] = []
        chunks_removed = 0
        for doc, _ in to_index:
            chunks_removed += store.drop_file(doc.doc_id)
        if prune:
            roots = [p.resolve() for p in paths if p.is_dir()]
            seen = {str(f.resolve()) for f, _ in files}
            for doc_id, record in list(store.manifest.files.items()):
                if doc_id not in seen and any(Path(doc_id).is_relative_to(r) for r in roots) and not Path(doc_id).exists():
                    chunks_removed += store.drop_file(doc_id)
                    removed_files.append(record.source)
        new_chunks = [c for _, chunks in to_index for c in chunks]
        tokens = [bm25_tokens(c.embedding_text()) for c in self.progress(new_chunks, desc="tokenise", unit="chunk")]
        seconds["tokenise"] = time.perf_counter() - t

        t = time.perf_counter()
        vectors = self._embed(new_chunks)
        seconds["embed"] = time.perf_counter() - t

        t = time.perf_counter()
        store.add(new_chunks, vectors, tokens)
        now = time.time()
        for doc, chunks in to_index:
            store.set_file(FileRecord(doc.doc_id, doc.source, doc.sha256, sum(len(p.text) for p in doc.pages),
                                      tuple(c.id for c in chunks), now, doc.kind, doc.encoding,
                                      len(doc.pages) + len(doc.skipped_pages) if doc.kind == "pdf" else None))
        if (to_index or removed_files or rebuild) and (store.chunks or IndexStore.exists(index_path)):
            store.save(index_path)
        seconds["index"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        return IngestReport(str(index_path), len(files) + len(errors), tuple(added), tuple(changed), tuple(unchanged),
                            tuple(removed_files), tuple(failed), len(new_chunks), chunks_removed, len(store), seconds)

    def _embed(self, chunks: list[Chunk]):
        import numpy as np

        if not chunks:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        texts = [c.embedding_text() for c in chunks]
        batch = 64
        parts = []
        bar = self.progress(total=len(texts), desc="embed", unit="chunk")
        for i in range(0, len(texts), batch):
            parts.append(self.embedder.embed_documents(texts[i:i + batch]))
            getattr(bar, "update", lambda n: None)(len(texts[i:i + batch]))
        getattr(bar, "close", lambda: None)()
        return np.concatenate(parts)


def _no_progress(iterable=None, **_kwargs):
    return iterable if iterable is not None else _NullBar()


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def tqdm_progress(iterable=None, **kwargs):
    """A tqdm bar (stderr) for the CLI."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
