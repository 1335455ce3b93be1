"""The persisted knowledge base: chunk store, FAISS index, BM25 index and the manifest that says how they were built.

Layout of an index folder::

    index/
      CURRENT            name of the live version folder (replaced atomically)
      v-<time>/          manifest.json, chunks.jsonl, dense.faiss, bm25/
      .lock              held while a writer updates the index

A save writes a complete new version folder, then swaps ``CURRENT`` with an atomic rename, so a
crash at any moment leaves either the old or the new index, never a half-written one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragbot.errors import IndexMismatchError, IndexNotFoundError, MissingExtraError
from ragbot.types import Chunk

FORMAT_VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    """One ingested file: where it came from, its content hash, and the chunks it produced."""

    doc_id: str
    source: str
    sha256: str
    size: int
    chunk_ids: tuple[str, ...]
    ingested_at: float
    kind: str = ""
    encoding: str | None = None
    pages: int | None = None


@dataclass(frozen=True)
class IndexSpec:
    """The settings an index depends on; a mismatch means the index must be rebuilt."""

    embedder: str
    dim: int
    chunking: dict[str, Any]

    def differences(self, other: IndexSpec) -> list[str]:
        out = []
        if self.embedder != other.embedder:
            out.append(f"embedder {other.embedder!r} (index) vs {self.embedder!r} (now)")
        if self.dim != other.dim:
            out.append(f"embedding dimension {other.dim} (index) vs {self.dim} (now)")
        for key in sorted(set(self.chunking) | set(other.chunking)):
            if self.chunking.get(key) != other.chunking.get(key):
                out.append(f"{key} {other.chunking.get(key)!r} (index) vs {self.chunking.get(key)!r} (now)")
        return out


@dataclass(frozen=True)
class Manifest:
    spec: IndexSpec
    files: dict[str, FileRecord] = field(default_factory=dict)
    next_fid: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["files"] = {k: {**asdict(v), "chunk_ids": list(v.chunk_ids)} for k, v in self.files.items()}
        return json.dumps(d, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        files = {k: FileRecord(**{**v, "chunk_ids": tuple(v["chunk_ids"])}) for k, v in d["files"].items()}
        return cls(IndexSpec(**d["spec"]), files, d["next_fid"], d["created_at"], d["updated_at"], d["format_version"])


def import_faiss() -> Any:
    """faiss comes from one of two extras (CPU or GPU build); say which to install when neither is."""
    try:
        import faiss
    except ImportError:
        raise MissingExtraError(
            "faiss is not installed: pip install 'ragbot[cpu]' (or 'ragbot[gpu]' on a machine with a CUDA GPU)"
        ) from None
    return faiss


def bm25_tokens(text: str) -> list[str]:
    """Jieba search-mode words, lower-cased, without punctuation or whitespace.

    Search mode also emits the short words inside long ones (大语言模型 → 语言, 模型, 语言模型, ...),
    which lets a question match a document that phrases a term differently.
    """
    import jieba

    jieba.setLogLevel(60)
    return [w for w in (t.strip().lower() for t in jieba.lcut_for_search(text)) if w and any(ch.isalnum() for ch in w)]


class IndexStore:
    """Chunks plus their dense (FAISS) and sparse (BM25) indexes, kept in step.

    Use :meth:`open` to load or create, :meth:`add` / :meth:`remove` to change, :meth:`save` to persist.
    """

    def __init__(self, manifest: Manifest, chunks: dict[str, Chunk], fids: dict[str, int],
                 tokens: dict[str, list[str]], dense: Any, bm25: Any = None, bm25_order: Sequence[str] = ()) -> None:
        self.manifest = manifest
        self.chunks = chunks
        self.fids = fids
        self.tokens = tokens
        self.dense = dense
        self._bm25 = bm25
        self._bm25_order = list(bm25_order)
        self._by_fid = {fid: cid for cid, fid in fids.items()}
        self._gpu_dense: Any = None

    # ---- creation and persistence -------------------------------------------------------
    @classmethod
    def empty(cls, spec: IndexSpec) -> IndexStore:
        faiss = import_faiss()

        now = time.time()
        dense = faiss.IndexIDMap2(faiss.IndexFlatIP(spec.dim))
        return cls(Manifest(spec, {}, 0, now, now), {}, {}, {}, dense)

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / "CURRENT").is_file()

    @classmethod
    def load(cls, path: Path, expect: IndexSpec | None = None) -> IndexStore:
        """Load the index at ``path``; with ``expect``, fail unless it was built with those settings."""
        faiss = import_faiss()

        path = Path(path)
        if not cls.exists(path):
            raise IndexNotFoundError(f"no index at {path}; build one with: ragbot ingest PATH... --index {path}")
        version = path / (path / "CURRENT").read_text().strip()
        manifest = Manifest.from_json((version / "manifest.json").read_text(encoding="utf-8"))
        if manifest.format_version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"index at {path} has format {manifest.format_version}, this ragbot reads {FORMAT_VERSION}; "
                f"re-ingest: ragbot ingest PATH... --index {path} --rebuild"
            )
        if expect is not None:
            diffs = expect.differences(manifest.spec)
            if diffs:
                raise IndexMismatchError(
                    f"index at {path} was built with other settings: {'; '.join(diffs)}. "
                    f"Re-ingest with the current settings: ragbot ingest PATH... --index {path} --rebuild"
                )
        chunks, fids, tokens = {}, {}, {}
        with open(version / "chunks.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                fids[row["chunk"]["id"]] = row["fid"]
                tokens[row["chunk"]["id"]] = row["tokens"]
                chunks[row["chunk"]["id"]] = Chunk.from_dict(row["chunk"])
        dense = faiss.read_index(str(version / "dense.faiss"))
        bm25, order = None, []
        if (version / "bm25").is_dir():
            import bm25s

            bm25 = bm25s.BM25.load(str(version / "bm25"))
            order = json.loads((version / "bm25_order.json").read_text())
        return cls(manifest, chunks, fids, tokens, dense, bm25, order)

    def save(self, path: Path) -> Path:
        """Write a new version folder and switch ``CURRENT`` to it atomically; older versions are removed."""
        faiss = import_faiss()

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        name = f"v-{time.time_ns()}"
        tmp = path / f".tmp-{name}"
        tmp.mkdir()
        try:
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
                for cid, chunk in self.chunks.items():
                    row = {"fid": self.fids[cid], "tokens": self.tokens[cid], "chunk": chunk.to_dict()}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            faiss.write_index(self.dense, str(tmp / "dense.faiss"))
            if self.bm25 is not None:
                self.bm25.save(str(tmp / "bm25"))
                (tmp / "bm25_order.json").write_text(json.dumps(self._bm25_order))
            (tmp / "manifest.json").write_text(self.manifest.to_json(), encoding="utf-8")
            _fsync_dir(tmp)
            tmp.rename(path / name)
            pointer = path / ".CURRENT.tmp"
            pointer.write_text(name)
            os.replace(pointer, path / "CURRENT")
            _fsync_dir(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in path.iterdir():
            if old.is_dir() and old.name != name and (old.name.startswith("v-") or old.name.startswith(".tmp-")):
                shutil.rmtree(old, ignore_errors=True)
        return path / name

    @staticmethod
    @contextlib.contextmanager
    def writer_lock(path: Path) -> Iterator[None]:
        """Hold an exclusive lock while changing the index, so the app and the CLI never write at once."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- changes --------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray, tokens: Sequence[list[str]]) -> None:
        if len(chunks) != len(vectors) or len(chunks) != len(tokens):
            raise ValueError(f"{len(chunks)} chunks, {len(vectors)} vectors and {len(tokens)} token lists must match")
        if not chunks:
            return
        start = self.manifest.next_fid
        ids = np.arange(start, start + len(chunks), dtype=np.int64)
        self.dense.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        for chunk, fid, toks in zip(chunks, ids.tolist(), tokens):
            self.chunks[chunk.id] = chunk
            self.fids[chunk.id] = fid
            self._by_fid[fid] = chunk.id
            self.tokens[chunk.id] = list(toks)
        self.manifest = _replace(self.manifest, next_fid=start + len(chunks))
        self._invalidate()

    def remove(self, chunk_ids: Iterable[str]) -> int:
        ids = [cid for cid in chunk_ids if cid in self.chunks]
        if ids:
            fids = np.array([self.fids[c] for c in ids], dtype=np.int64)
            self.dense.remove_ids(fids)
            for cid in ids:
                del self._by_fid[self.fids.pop(cid)]
                del self.chunks[cid], self.tokens[cid]
            self._invalidate()
        return len(ids)

    def set_file(self, record: FileRecord) -> None:
        self.manifest = _replace(self.manifest, files={**self.manifest.files, record.doc_id: record}, updated_at=time.time())

    def drop_file(self, doc_id: str) -> int:
        """Remove a file and all its chunks from every index at once; returns the number of chunks removed."""
        record = self.manifest.files.get(doc_id)
        if record is None:
            return 0
        removed = self.remove(record.chunk_ids)
        files = dict(self.manifest.files)
        del files[doc_id]
        self.manifest = _replace(self.manifest, files=files, updated_at=time.time())
        return removed

    def _invalidate(self) -> None:
        self._bm25, self._bm25_order, self._gpu_dense = None, [], None

    @property
    def bm25(self) -> Any:
        """The BM25 index over all chunks; rebuilt from the stored tokens after a change (no re-tokenising)."""
        if self._bm25 is None and self.chunks:
            import bm25s

            self._bm25_order = list(self.chunks)
            corpus = [self.tokens[c] or [""] for c in self._bm25_order]
            self._bm25 = bm25s.BM25()
            self._bm25.index(corpus, show_progress=False)
        return self._bm25

    # ---- search ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def search_dense(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[Chunk, float]]]:
        """Top-k chunks by inner product (cosine on normalised vectors), for each query vector."""
        if not self.chunks:
            return [[] for _ in range(len(query_vectors))]
        index = self._searchable_dense()
        scores, fids = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), min(k, len(self.chunks)))
        return [[(self.chunks[self._by_fid[f]], float(s)) for s, f in zip(row_s, row_f) if f >= 0]
                for row_s, row_f in zip(scores, fids)]

    def search_bm25(self, query_tokens: list[str], k: int) -> list[tuple[Chunk, float]]:
        bm25 = self.bm25
        if bm25 is None:
            return []
        known = [t for t in query_tokens if t in bm25.vocab_dict]
        if not known:
            return []
        scores = bm25.get_scores(known)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.chunks[self._bm25_order[i]], float(scores[i])) for i in top if scores[i] > 0]

    def _searchable_dense(self) -> Any:
        """The FAISS index to search: moved to the GPU once when faiss sees one (the ``[gpu]`` extra)."""
        faiss = import_faiss()

        if self._gpu_dense is None:
            self._gpu_dense = self.dense
            if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
                self._gpu_resources = faiss.StandardGpuResources()
                self._gpu_dense = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.dense)
        return self._gpu_dense

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        record = self.manifest.files.get(doc_id)
        return [self.chunks[c] for c in record.chunk_ids if c in self.chunks] if record else []


def _replace(manifest: Manifest, **changes: Any) -> Manifest:
    import dataclasses

    return dataclasses.replace(manifest, **changes)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
