"""The persisted knowledge base: chunk store, FAISS index, BM25 index and the manifest that says how they were built.

Layout of an index folder::

    index/
      CURRENT            name of the live version folder (replaced atomically)
      v-<time>/          manifest.json, chunks.jsonl, dense.faiss, bm25/, .readers
      .lock              held while a writer updates the index; says who holds it

Guarantees, as a database would give them:

- **Atomic and durable.** A save writes a complete new version folder, fsyncs every file in it and
  the folder, writes and fsyncs a new pointer file, swaps it for ``CURRENT`` with ``os.replace`` and
  fsyncs the index folder. A crash or power loss at any moment leaves the old or the new index.
- **Readers never see a half-deleted version.** A reader holds a shared lock on the version's
  ``.readers`` file while it reads; superseded versions are deleted only when no reader holds one,
  after a grace period, and the newest ``keep`` of them stay for ``ragbot index rollback``.
- **Consistent or refused.** Loading checks that the manifest, chunks and vectors agree (one vector
  per chunk, no chunk id twice); a damaged version is reported in one line and the previous one is
  used; :meth:`IndexStore.add` refuses a chunk id the store already holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragbot.errors import (IndexCorruptError, IndexLockedError, IndexMismatchError, IndexNotFoundError,
                           MissingExtraError)
from ragbot.settings import embedder_identity
from ragbot.types import Chunk

if TYPE_CHECKING:
    from ragbot.settings import Settings

log = logging.getLogger("ragbot.store")

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
    aliases: dict[str, str] = field(default_factory=dict)  # other paths with identical content: doc_id -> source

    def names(self) -> list[str]:
        """Every path this record stands for: its own, then its aliases'."""
        return [self.doc_id, *self.aliases]


# Bump when ingest/chunking.py would cut the same text differently: every index built before must be rebuilt.
CHUNKER_VERSION = 1


def chunking_spec(chunk_size: int, chunk_overlap: int, mode: str) -> dict[str, Any]:
    """What an index records about its chunking (``ingest.chunking.Chunker.spec`` is this too)."""
    return {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "mode": mode, "version": CHUNKER_VERSION}


@dataclass(frozen=True)
class IndexSpec:
    """What an index depends on: the embedder, its dimension and the chunking. A mismatch means rebuild.

    This is the one place the contract is written: ingest builds an index with it, every reader opens
    one with ``IndexStore.load(path, expect=IndexSpec.from_settings(...))``, and variant indexes are
    named by its :meth:`key`.
    """

    embedder: str
    dim: int | None  # None in an expectation: the dimension is not known yet (the embedder is not loaded)
    chunking: dict[str, Any]

    @classmethod
    def from_settings(cls, settings: Settings, dim: int | None = None) -> IndexSpec:
        """The spec an index built with ``settings`` has; no splitter or model is built for it.

        ``dim`` is the embedder's dimension when it is loaded; without it, that one check is skipped.
        """
        return cls(embedder_identity(settings), dim,
                   chunking_spec(settings.chunk_size, settings.chunk_overlap, settings.chunker))

    def key(self) -> str:
        """A short hash of what decides the index's contents (embedder and chunking): equal keys share an index."""
        data = json.dumps({"embedder": self.embedder, "chunking": self.chunking}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:10]

    def differences(self, other: IndexSpec) -> list[str]:
        """What differs between this (expected, "now") spec and ``other`` (the index's), one phrase each."""
        out = []
        if self.embedder != other.embedder:
            out.append(f"embedder {other.embedder!r} (index) vs {self.embedder!r} (now)")
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
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
        return _json(d, indent=1)

    def sources(self) -> dict[str, str]:
        """Every path the index holds, its records' own and their aliases', with the name shown for it."""
        return {name: source for r in self.files.values() for name, source in ((r.doc_id, r.source), *r.aliases.items())}

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
        self.version = ""  # the version folder this store was loaded from or last saved as

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

    @staticmethod
    def current_version(path: Path) -> str:
        """The name of the live version folder ('' when there is none)."""
        try:
            return (Path(path) / "CURRENT").read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    @staticmethod
    def version_names(path: Path) -> list[str]:
        """Published version folders, oldest first."""
        path = Path(path)
        if not path.is_dir():
            return []
        return sorted((p.name for p in path.iterdir() if p.is_dir() and p.name.startswith("v-")), key=_version_time)

    @classmethod
    def load(cls, path: Path, expect: IndexSpec | None = None) -> IndexStore:
        """Load the live version of the index at ``path``; with ``expect``, fail unless it was built with those settings.

        A damaged live version (truncated or corrupt file, vectors and chunks out of step) is reported
        in one line and the newest earlier version that reads cleanly is used instead.
        """
        import_faiss()
        path = Path(path)
        if not cls.exists(path):
            raise IndexNotFoundError(f"no index at {path}; build one with: ragbot ingest PATH... --index {path}")
        current = cls.current_version(path)
        # fall back to the versions published before the live one first, newest first; a newer folder is one
        # rolled back from, or one a killed writer never published: only when nothing older reads
        others = [n for n in reversed(cls.version_names(path)) if n != current]
        older = [n for n in others if _version_time(n) < _version_time(current)]
        candidates = [current, *older, *(n for n in others if n not in older)]
        first_error: IndexCorruptError | None = None
        for name in candidates:
            try:
                store = cls._load_version(path, name)
            except IndexCorruptError as e:
                first_error = first_error or e
                continue
            if name != current:
                log.warning("index at %s: %s; using the previous version %s (ragbot index rollback makes that "
                            "permanent)", path, first_error, name)
            store.check(path, expect)
            return store
        raise IndexCorruptError(f"{first_error}; no earlier version of {path} could be read. Rebuild it: "
                                f"ragbot ingest PATH... --index {path} --rebuild")

    @classmethod
    def _load_version(cls, path: Path, name: str) -> IndexStore:
        """Read one version folder under its shared reader lock; :class:`IndexCorruptError` when it is damaged."""
        version = path / name
        try:
            lock = open(version / ".readers", "rb")
        except FileNotFoundError:  # removed (or never finished) before we got here
            if (version / "manifest.json").is_file():
                return cls._read_version(version)  # an index saved before reader locks existed
            raise IndexCorruptError(f"version {name} is missing") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            if not (version / "manifest.json").is_file():
                raise IndexCorruptError(f"version {name} was removed while opening it")
            return cls._read_version(version)

    @classmethod
    def _read_version(cls, version: Path) -> IndexStore:
        faiss = import_faiss()

        name = version.name
        try:
            manifest = Manifest.from_json((version / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IndexCorruptError(f"version {name} has an unreadable manifest ({type(e).__name__}: {e})") from None
        if manifest.format_version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"index at {version.parent} has format {manifest.format_version}, this ragbot reads {FORMAT_VERSION}; "
                f"re-ingest: ragbot ingest PATH... --index {version.parent} --rebuild"
            )
        chunks, fids, tokens = {}, {}, {}
        try:
            with open(version / "chunks.jsonl", encoding="utf-8", errors="strict") as f:
                for number, line in enumerate(f, start=1):
                    row = json.loads(line)
                    cid = row["chunk"]["id"]
                    if cid in chunks:
                        raise ValueError(f"chunk id {cid!r} appears twice (line {number})")
                    fids[cid], tokens[cid], chunks[cid] = row["fid"], row["tokens"], Chunk.from_dict(row["chunk"])
            dense = faiss.read_index(str(version / "dense.faiss"))
            bm25, order = None, []
            if (version / "bm25").is_dir():
                import bm25s

                bm25 = bm25s.BM25.load(str(version / "bm25"))
                order = json.loads((version / "bm25_order.json").read_text())
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise IndexCorruptError(f"version {name} is damaged ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        listed = {c for r in manifest.files.values() for c in r.chunk_ids}
        problems = []
        if dense.ntotal != len(chunks):
            problems.append(f"{dense.ntotal} vectors for {len(chunks)} chunks")
        if len(set(fids.values())) != len(fids):
            problems.append("two chunks share a vector id")
        if listed != set(chunks):
            problems.append(f"the manifest lists {len(listed)} chunks, the chunk file holds {len(chunks)}")
        if bm25 is not None and len(order) != len(chunks):
            problems.append(f"BM25 covers {len(order)} of {len(chunks)} chunks")
        if problems:
            raise IndexCorruptError(f"version {name} is inconsistent: {'; '.join(problems)}")
        store = cls(manifest, chunks, fids, tokens, dense, bm25, order)
        store.version = name
        return store

    def check(self, path: Path, expect: IndexSpec | None) -> None:
        """:class:`IndexMismatchError` (saying to rebuild) unless this index was built as ``expect`` says."""
        diffs = expect.differences(self.manifest.spec) if expect is not None else []
        if diffs:
            raise IndexMismatchError(
                f"index at {path} was built with other settings: {'; '.join(diffs)}. "
                f"Re-ingest with the current settings: ragbot ingest PATH... --index {path} --rebuild"
            )

    def save(self, path: Path, *, keep: int = 2, grace_s: float = 300.0) -> Path:
        """Publish this store as a new version of the index at ``path`` (atomic, durable); returns its folder.

        Order (each step durable before the next): every file of the new version → the version folder
        → its rename into place → the pointer file → ``os.replace`` onto ``CURRENT`` → the index folder.
        Then superseded versions beyond the newest ``keep`` are removed once they are older than
        ``grace_s`` and no reader holds them.
        """
        faiss = import_faiss()

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        name = f"v-{time.time_ns()}"
        tmp = path / f".tmp-{name}"
        tmp.mkdir()
        try:
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
                for cid, chunk in self.chunks.items():
                    f.write(_json({"fid": self.fids[cid], "tokens": self.tokens[cid], "chunk": chunk.to_dict()}) + "\n")
            faiss.write_index(self.dense, str(tmp / "dense.faiss"))
            if self.bm25 is not None:
                self.bm25.save(str(tmp / "bm25"))
                (tmp / "bm25_order.json").write_text(json.dumps(self._bm25_order))
            (tmp / "manifest.json").write_text(self.manifest.to_json(), encoding="utf-8")
            (tmp / ".readers").touch()
            _fsync_tree(tmp)
            tmp.rename(path / name)
            _fsync_dir(path)
            _publish_pointer(path, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.version = name
        self.prune_versions(path, keep=keep, grace_s=grace_s)
        return path / name

    @classmethod
    def prune_versions(cls, path: Path, *, keep: int = 2, grace_s: float = 300.0) -> list[str]:
        """Delete superseded versions beyond the newest ``keep``: only those superseded more than ``grace_s``
        ago and held by no reader (a non-blocking exclusive lock on ``.readers``). Returns what was removed."""
        path = Path(path)
        current = cls.current_version(path)
        names = cls.version_names(path)
        older = [n for n in names if n != current]
        keep_names = set(older[len(older) - keep:]) if keep else set()
        now = time.time_ns()
        removed = []
        for i, n in enumerate(names):
            successor = names[i + 1] if i + 1 < len(names) else None
            if n == current or n in keep_names or successor is None:
                continue
            if (now - _version_time(successor)) / 1e9 < grace_s:
                continue  # superseded too recently: a reader may be about to open it
            if _remove_unless_read(path / n):
                removed.append(n)
        for tmp in path.glob(".tmp-v-*"):  # left by a writer that crashed (we hold the writer lock, or no one does)
            if time.time() - tmp.stat().st_mtime > max(grace_s, 60):
                shutil.rmtree(tmp, ignore_errors=True)
        return removed

    @classmethod
    def versions(cls, path: Path) -> list[VersionInfo]:
        """Every version on disk, newest first, with whether it reads cleanly."""
        current = cls.current_version(path)
        return [cls._info(Path(path), name, current) for name in reversed(cls.version_names(path))]

    @classmethod
    def _info(cls, path: Path, name: str, current: str) -> VersionInfo:
        try:
            store = cls._load_version(path, name)
            return VersionInfo(name, _version_time(name) / 1e9, name == current, len(store.manifest.files), len(store))
        except (IndexCorruptError, IndexMismatchError) as e:
            return VersionInfo(name, _version_time(name) / 1e9, name == current, 0, 0, str(e))

    @classmethod
    def rollback(cls, path: Path, to: str | None = None) -> VersionInfo:
        """Make an earlier version live again: ``to`` by name, or the newest readable one older than the live one.

        Call it holding :meth:`writer_lock`. The version rolled back from stays on disk (it is pruned later
        like any superseded version), so a rollback can itself be undone with ``to``. Only the versions
        it considers are read.
        """
        path = Path(path)
        if not cls.exists(path):
            raise IndexNotFoundError(f"no index at {path}; nothing to roll back")
        names, current = cls.version_names(path), cls.current_version(path)
        if to is not None:
            if to not in names:
                raise IndexNotFoundError(f"no version {to!r} in {path}; versions: {', '.join(reversed(names))}")
            target = cls._info(path, to, current)
            if target.error:
                raise IndexCorruptError(f"version {to} cannot be used: {target.error}")
        else:
            older = (cls._info(path, n, current) for n in reversed(names) if _version_time(n) < _version_time(current))
            target = next((v for v in older if not v.error), None)
            if target is None:
                raise IndexNotFoundError(f"index at {path} has no earlier readable version to roll back to")
        _publish_pointer(path, target.name)
        return target

    @classmethod
    def delete(cls, path: Path) -> None:
        """Remove the index at ``path`` (call it holding :meth:`writer_lock`): the pointer goes first, durably, so
        nothing opens it any more; versions a reader still holds stay until a later save or delete prunes them."""
        path = Path(path)
        (path / "CURRENT").unlink(missing_ok=True)
        if path.is_dir():
            _fsync_dir(path)
        for name in cls.version_names(path):
            _remove_unless_read(path / name)

    @staticmethod
    @contextlib.contextmanager
    def writer_lock(path: Path, timeout_s: float = 600.0) -> Iterator[None]:
        """Hold an exclusive lock while changing the index, so the app and the CLI never write at once.

        A second writer says once who holds the lock (pid, host, command, since when) and gives up with
        :class:`IndexLockedError` after ``timeout_s`` seconds.

        Plain ``fcntl.flock`` rather than the ``filelock`` package (kept on purpose): ``FileLock`` truncates the
        lock file on every attempt to acquire it, so the holder could not be written into it for a waiter to
        name; and the readers' shared locks (``LOCK_SH`` on each version's ``.readers``) would become
        ``filelock.ReadWriteLock``, a SQLite database per version folder, where one flock on an open file does
        the same job and the kernel drops it when a process dies.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / ".lock", "a+", encoding="utf-8") as fh:
            deadline = time.monotonic() + timeout_s
            told = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = _lock_holder(fh)
                    if time.monotonic() >= deadline:
                        raise IndexLockedError(
                            f"index at {path} is being changed by {holder}; gave up after {timeout_s:g} s. "
                            f"Wait for it to finish, or raise lock_timeout_s") from None
                    if not told:
                        log.warning("waiting for the index lock on %s, held by %s (at most %g s)", path, holder,
                                    timeout_s)
                        told = True
                    time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                     "command": " ".join(sys.argv)[:200]}))
                fh.flush()
                yield
            finally:
                fh.seek(0)
                fh.truncate()
                fh.flush()
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- changes --------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray, tokens: Sequence[list[str]]) -> None:
        if len(chunks) != len(vectors) or len(chunks) != len(tokens):
            raise ValueError(f"{len(chunks)} chunks, {len(vectors)} vectors and {len(tokens)} token lists must match")
        if not chunks:
            return
        ids_in = [c.id for c in chunks]
        held = [cid for cid in ids_in if cid in self.chunks]
        if held or len(set(ids_in)) != len(ids_in):
            dup = held[0] if held else next(c for c in ids_in if ids_in.count(c) > 1)
            raise ValueError(f"chunk id {dup!r} is already in the index (or twice in this batch); "
                             "drop the file's old chunks first (drop_file) or rebuild the index")
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


@dataclass(frozen=True)
class VersionInfo:
    """One version folder of an index, as ``ragbot index versions`` lists it."""

    name: str
    created_at: float
    current: bool
    files: int
    chunks: int
    error: str = ""  # why it cannot be read ("" when it can)


def _version_time(name: str) -> int:
    try:
        return int(name.split("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _json(obj: Any, indent: int | None = None) -> str:
    """JSON with CJK kept readable; a path holding undecodable bytes (lone surrogates) is written escaped instead."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, indent=indent)
    return text


def _lock_holder(fh: Any) -> str:
    try:
        fh.seek(0)
        info = json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command') or '?'}) since {since}"


def _publish_pointer(path: Path, name: str) -> None:
    pointer = path / ".CURRENT.tmp"
    with open(pointer, "w", encoding="utf-8") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, path / "CURRENT")
    _fsync_dir(path)


def _remove_unless_read(version: Path) -> bool:
    """Delete a version folder unless a reader holds its ``.readers`` lock right now."""
    try:
        lock = open(version / ".readers", "rb")
    except FileNotFoundError:
        shutil.rmtree(version, ignore_errors=True)
        return True
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # remove the data first and the lock file last, so a reader that opens it now finds no manifest
        for p in sorted(version.rglob("*"), key=lambda p: -len(p.parts)):
            if p.name != ".readers":
                p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
        shutil.rmtree(version, ignore_errors=True)
    return True


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every folder (deepest first), then ``root``."""
    dirs = []
    for p in root.rglob("*"):
        if p.is_dir():
            dirs.append(p)
        else:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        _fsync_dir(d)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
