"""The persisted knowledge base: chunks, their dense (FAISS) and sparse (BM25) indexes, and the manifest that says
how they were built.

Layout of an index folder::

    index/
      CURRENT            name of the live version folder (replaced atomically)
      v-<time>/          manifest.json (files, segment list), tombstones.npy, .readers
      segments/s-<time>/ one immutable segment each (:mod:`ragbot.segments`): chunks in SQLite, FAISS, BM25 postings
      .lock              held while a writer updates the index; says who holds it

A version is a list of segments plus tombstones (the vector ids of removed chunks). A save writes only what
changed: the chunks added since the last save become one new segment, removals become tombstones, and a new
version folder of a few kilobytes (plus the file list) names them. Segments are shared by the versions that
list them and deleted once no version on disk does. Compaction (:meth:`IndexStore.compact`, ``ragbot index
compact``; small segments are merged automatically) rewrites segments without their removed rows.

Guarantees, as a database would give them:

- **Atomic and durable.** A save writes and fsyncs its new segment (renamed into place only once complete),
  then a complete new version folder, fsyncs every file in it and the folder, writes and fsyncs a new pointer
  file, swaps it for ``CURRENT`` with ``os.replace`` and fsyncs the index folder. A crash or power loss at any
  moment leaves the old or the new index (a segment no version names is removed later).
- **Readers never see a half-deleted version.** A reader holds a shared lock on the version's ``.readers``
  file while it opens it; superseded versions are deleted only when no reader holds one, after a grace
  period, and the newest ``keep`` of them stay for ``ragbot index rollback``. An open reader keeps its
  segments' files open, so deleting them later never breaks it.
- **Consistent or refused.** Opening checks each segment (file sizes as written, one vector, chunk and
  length per row) and the version (segments that exist and do not overlap, the manifest's chunk count);
  a damaged version is reported in one line and the previous one is used; :meth:`IndexStore.add` refuses
  a chunk id the store already holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragbot.errors import IndexCorruptError, IndexLockedError, IndexMismatchError, IndexNotFoundError, RagbotError
from ragbot.segments import (BM25_B, BM25_K1, AnnParams, DiskSegment, MemorySegment, Segment, import_faiss,
                             index_vectors, merge_postings, write_segment)
from ragbot.settings import embedder_identity
from ragbot.types import Chunk

if TYPE_CHECKING:
    from ragbot.settings import Settings

log = logging.getLogger("ragbot.store")

FORMAT_VERSION = 2  # 1: one chunks.jsonl + dense.faiss per version (still read; saved as 2)


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
    segments: tuple[str, ...] = ()  # segment folders under segments/, in vector-id order
    ann: dict[str, Any] = field(default_factory=dict)  # the AnnParams the segments were written with
    backend: dict[str, Any] = field(default_factory=dict)  # {} for local segments; Milvus: see ragbot.milvus

    def to_json(self) -> str:
        # by hand, not dataclasses.asdict: that deep-copies every chunk id (8 s for a million)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["spec"] = asdict(self.spec)
        d["files"] = {k: {**{f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, "chunk_ids": list(v.chunk_ids)}
                      for k, v in self.files.items()}
        d["segments"] = list(self.segments)
        return _json(d, indent=1 if len(self.files) < 1000 else None)

    def sources(self) -> dict[str, str]:
        """Every path the index holds, its records' own and their aliases', with the name shown for it."""
        return {name: source for r in self.files.values() for name, source in ((r.doc_id, r.source), *r.aliases.items())}

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        files = {k: FileRecord(**{**v, "chunk_ids": tuple(v["chunk_ids"])}) for k, v in d["files"].items()}
        return cls(IndexSpec(**d["spec"]), files, d["next_fid"], d["created_at"], d["updated_at"], d["format_version"],
                   tuple(d.get("segments", ())), d.get("ann", {}), d.get("backend", {}))


def bm25_tokens(text: str) -> list[str]:
    """Jieba search-mode words, lower-cased, without punctuation or whitespace.

    Search mode also emits the short words inside long ones (大语言模型 → 语言, 模型, 语言模型, ...),
    which lets a question match a document that phrases a term differently.
    """
    import jieba

    jieba.setLogLevel(60)
    return [w for w in (t.strip().lower() for t in jieba.lcut_for_search(text)) if w and any(ch.isalnum() for ch in w)]


MAX_SMALL_SEGMENTS = 8  # more exact (small) segments than this are merged into one at the next save


class IndexStore:
    """Chunks plus their dense (FAISS) and sparse (BM25) indexes, kept in step, in segments.

    Use :meth:`open` to load or create, :meth:`add` / :meth:`remove` to change, :meth:`save` to persist.
    ``chunks`` reads like a dict of chunk id -> :class:`Chunk` but fetches from the segments on demand.
    """

    def __init__(self, manifest: Manifest, segments: Sequence[DiskSegment] = (), tombstones: Iterable[int] = (),
                 ann: AnnParams | None = None) -> None:
        self.manifest = manifest
        self.segments: list[DiskSegment] = list(segments)
        self.pending = MemorySegment(manifest.spec.dim or 0)
        self.dead: set[int] = {int(f) for f in tombstones}
        self.ann = ann or AnnParams()
        self.nprobe = self.ann.nprobe
        self.chunks = ChunkView(self)
        self._alive: dict[int, np.ndarray] = {}
        self._gpu: dict[int, Any] = {}
        self._selectors: dict[int, tuple[Any, ...]] = {}
        self.version = ""  # the version folder this store was loaded from or last saved as

    # ---- creation and persistence -------------------------------------------------------
    @classmethod
    def empty(cls, spec: IndexSpec, ann: AnnParams | None = None) -> IndexStore:
        import_faiss()
        now = time.time()
        return cls(Manifest(spec, {}, 0, now, now), ann=ann)

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
        name = version.name
        try:
            manifest = Manifest.from_json((version / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IndexCorruptError(f"version {name} has an unreadable manifest ({type(e).__name__}: {e})") from None
        if manifest.format_version == 1:
            return _read_version_1(version, manifest)
        if manifest.backend:  # the data lives in an engine (its module reads the version)
            return _backend(manifest.backend).from_version(version, manifest)
        if manifest.format_version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"index at {version.parent} has format {manifest.format_version}, this ragbot reads {FORMAT_VERSION}; "
                f"re-ingest: ragbot ingest PATH... --index {version.parent} --rebuild"
            )
        segments = []
        try:
            for seg in manifest.segments:
                if not (version.parent / "segments" / seg / "meta.json").is_file():
                    raise IndexCorruptError(f"version {name} names segment {seg}, which is missing")
                segments.append(DiskSegment(version.parent / "segments" / seg))
            tombstones = np.load(version / "tombstones.npy")
        except IndexCorruptError as e:
            raise IndexCorruptError(f"version {name}: {e}") from None
        except (OSError, ValueError) as e:
            raise IndexCorruptError(f"version {name} is damaged ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        store = cls(manifest, segments, tombstones.tolist(), AnnParams(**manifest.ann) if manifest.ann else None)
        problems = []
        spans = sorted((int(s.fids[0]), int(s.fids[-1]), s.name) for s in segments if len(s))
        for (_, hi, a), (lo, _, b) in zip(spans, spans[1:]):
            if lo <= hi:
                problems.append(f"segments {a} and {b} share vector ids")
        dead = np.fromiter(store.dead, dtype=np.int64, count=len(store.dead))
        stray = len(dead) - sum(int(s.holds(dead).sum()) for s in segments)
        if stray:
            problems.append(f"{stray} tombstones name no segment row")
        listed = sum(len(r.chunk_ids) for r in manifest.files.values())
        if listed != len(store):
            problems.append(f"the manifest lists {listed} chunks, the segments hold {len(store)}")
        if problems:
            raise IndexCorruptError(f"version {name} is inconsistent: {'; '.join(problems)}")
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

        Order (each step durable before the next): the new segment (chunks added since the last save),
        renamed into place → every file of the new version → the version folder → its rename into place →
        the pointer file → ``os.replace`` onto ``CURRENT`` → the index folder. More than
        ``MAX_SMALL_SEGMENTS`` exact segments are merged into one first. Then superseded versions beyond
        the newest ``keep`` are removed once they are older than ``grace_s`` and no reader holds them, and
        segments that no version on disk names any more.
        """
        path = Path(path)
        (path / "segments").mkdir(parents=True, exist_ok=True)
        self.segments = [s if _same_dir(s.folder.parent, path / "segments") else self._copy_segment(s, path)
                         for s in self.segments]
        if len(self.pending):
            self.segments.append(self._write([self.pending], path))
            self.pending.clear()
            self._changed()
        if sum(not s.approximate for s in self.segments) > MAX_SMALL_SEGMENTS:
            for run in _small_runs(self.segments):  # neighbours in vector-id order only: a merged segment
                self._merge(run, path)  # must not span a large one, or their id ranges would overlap
        self.manifest = _replace(self.manifest, segments=tuple(s.name for s in self.segments), ann=asdict(self.ann))
        name = f"v-{time.time_ns()}"
        tmp = path / f".tmp-{name}"
        tmp.mkdir()
        try:
            (tmp / "manifest.json").write_text(self.manifest.to_json(), encoding="utf-8")
            # what the version needs besides the manifest, readable without parsing it (segment GC reads it)
            (tmp / "uses.json").write_text(json.dumps({"segments": list(self.manifest.segments),
                                                       "next_fid": self.manifest.next_fid,
                                                       "backend": {k: v for k, v in self.manifest.backend.items()
                                                                   if k != "gate"}}), encoding="utf-8")
            np.save(tmp / "tombstones.npy", np.array(sorted(self.dead), dtype=np.int64))
            (tmp / ".readers").touch()
            _fsync_tree(tmp)
            tmp.rename(path / name)
            _fsync_dir(path)
            _publish_pointer(path, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.version = name
        try:  # published: cleaning up may fail (a folder in use, a store unreachable) without undoing that
            self.prune_versions(path, keep=keep, grace_s=grace_s)
        except (OSError, ValueError, RagbotError) as e:
            log.warning("index at %s: published %s, but removing old versions failed (%s: %s); the next save "
                        "tries again", path, name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return path / name

    def compact(self, path: Path) -> CompactReport:
        """Rewrite all segments as one, without the removed rows (nothing to do for one segment with none).

        Call :meth:`save` afterwards to publish it (until then readers keep the old segments). Exact: the
        same chunks, vectors and BM25 statistics, minus the removed rows; a large result gets an IVF index
        trained afresh (the cost of a compaction at 1M chunks is that training: see README "Scale").
        """
        path = Path(path)
        if len(self.pending):
            self.save(path)
        t = time.perf_counter()
        before = len(self.segments)
        dead_rows = len(self.dead)
        if before > 1 or dead_rows:
            self._merge(list(self.segments), path)
        return CompactReport(before, len(self.segments), dead_rows, time.perf_counter() - t)

    def _merge(self, segments: Sequence[Segment], path: Path) -> None:
        """Replace ``segments`` (in this store's list) by one new segment of their live rows."""
        merged = self._write(segments, path)
        names = {s.name for s in segments}
        for s in segments:
            fids = s.fids
            self.dead.difference_update(int(f) for f in fids[~self._alive_mask(s)])
        keep = [s for s in self.segments if s.name not in names]
        self.segments = sorted([*keep, merged], key=lambda s: int(s.fids[0]) if len(s) else 0)
        self._changed()

    def _write(self, segments: Sequence[Segment], path: Path) -> DiskSegment:
        """One new segment folder under ``path/segments`` holding the live rows of ``segments``."""
        masks = [self._alive_mask(s) for s in segments]
        fids = np.concatenate([s.fids[m] for s, m in zip(segments, masks)]) if segments else np.zeros(0, np.int64)
        if len(fids) > 1 and not np.all(np.diff(fids) > 0):  # segments are kept in fid order and never overlap
            raise IndexCorruptError("segments share vector ids or are out of vector-id order; rebuild the index")
        vectors = np.concatenate([s.vectors()[1][m] for s, m in zip(segments, masks)]) if segments else None
        vocab, arrays = merge_postings([(s.vocabulary(), *s.postings_arrays(), m) for s, m in zip(segments, masks)])
        doclen = np.concatenate([np.asarray(s.doclen)[m] for s, m in zip(segments, masks)])

        def rows() -> Iterator[tuple[int, Chunk]]:
            for s in segments:
                alive = self._alive_mask(s)
                ids = {int(f) for f in s.fids[alive]} if not alive.all() else None
                for fid, chunk in s.iter_chunks():
                    if ids is None or fid in ids:
                        yield fid, chunk

        name = f"s-{time.time_ns()}"
        tmp = path / "segments" / f".tmp-{name}"
        try:
            write_segment(tmp, self.manifest.spec.dim or 0, rows(), vectors, vocab, {**arrays, "doclen": doclen}, self.ann)
            _fsync_dir(tmp)
            tmp.rename(path / "segments" / name)
            _fsync_dir(path / "segments")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return DiskSegment(path / "segments" / name)

    def _copy_segment(self, segment: DiskSegment, path: Path) -> DiskSegment:
        """A segment of another index (this store was loaded from elsewhere), copied into ``path``."""
        target = path / "segments" / segment.name
        if not target.is_dir():
            tmp = path / "segments" / f".tmp-{segment.name}"
            shutil.copytree(segment.folder, tmp)
            _fsync_tree(tmp)
            tmp.rename(target)
            _fsync_dir(path / "segments")
        return DiskSegment(target)

    @classmethod
    def prune_versions(cls, path: Path, *, keep: int = 2, grace_s: float = 300.0) -> list[str]:
        """Delete superseded versions beyond the newest ``keep``: only those superseded more than ``grace_s``
        ago and held by no reader (a non-blocking exclusive lock on ``.readers``); then the segments no
        remaining version names. Returns the versions removed."""
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
        for tmp in [*path.glob(".tmp-v-*"), *path.glob("segments/.tmp-s-*")]:  # left by a writer that crashed
            if time.time() - tmp.stat().st_mtime > max(grace_s, 60):
                shutil.rmtree(tmp, ignore_errors=True)
        cls._remove_unused_segments(path, grace_s)
        return removed

    @classmethod
    def _remove_unused_segments(cls, path: Path, grace_s: float) -> None:
        """Delete segment folders (and Milvus collections) that no version on disk names (a version that cannot be
        read keeps them all)."""
        named: set[str] = set()
        backends: list[dict[str, Any]] = []
        for n in cls.version_names(path):
            uses = path / n / "uses.json"
            try:  # uses.json: a few bytes; versions saved before it: the manifest
                d = json.loads((uses if uses.is_file() else path / n / "manifest.json").read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # a version being removed
            except (OSError, ValueError):
                return
            named.update(d.get("segments", ()))
            if d.get("backend"):
                backends.append(d["backend"])
        if (path / "milvus.json").is_file():
            _backend({"kind": "milvus"}).drop_unused_collections(path, backends)
        for seg in path.glob("segments/s-*"):
            if seg.name not in named and (time.time_ns() - _version_time(seg.name)) / 1e9 >= min(grace_s, 60):
                shutil.rmtree(seg, ignore_errors=True)

    @classmethod
    def versions(cls, path: Path) -> list[VersionInfo]:
        """Every version on disk, newest first, with whether it reads cleanly."""
        current = cls.current_version(path)
        return [cls._info(Path(path), name, current) for name in reversed(cls.version_names(path))]

    @classmethod
    def _info(cls, path: Path, name: str, current: str) -> VersionInfo:
        try:
            store = cls._load_version(path, name)
            return VersionInfo(name, _version_time(name) / 1e9, name == current, len(store.manifest.files), len(store),
                               segments=len(store.segments), removed_rows=len(store.dead))
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
        if path.is_dir():
            cls._remove_unused_segments(path, 0.0)

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
        held = list(self._fids_of(ids_in))
        if held or len(set(ids_in)) != len(ids_in):
            dup = held[0] if held else next(c for c in ids_in if ids_in.count(c) > 1)
            raise ValueError(f"chunk id {dup!r} is already in the index (or twice in this batch); "
                             "drop the file's old chunks first (drop_file) or rebuild the index")
        start = self.manifest.next_fid
        self.pending.dim = self.pending.dim or vectors.shape[1]
        self.pending.add(range(start, start + len(chunks)), chunks, np.asarray(vectors, dtype=np.float32), tokens)
        self.manifest = _replace(self.manifest, next_fid=start + len(chunks))
        self._changed()

    def remove(self, chunk_ids: Iterable[str]) -> int:
        """Remove chunks by id: unsaved ones at once, saved ones by tombstone; returns how many were held."""
        fids = self._fids_of(list(chunk_ids))
        unsaved = set(self.pending.fid_of(list(fids)).values())
        self.pending.remove(unsaved)
        self.dead.update(f for f in fids.values() if f not in unsaved)
        if fids:
            self._changed()
        return len(fids)

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

    def _changed(self) -> None:
        self._alive, self._gpu, self._selectors = {}, {}, {}

    # ---- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(s) for s in self.segments) - len(self.dead) + len(self.pending)

    def _all(self) -> list[Segment]:
        """Saved segments in fid order, then the unsaved chunks (the newest fids)."""
        return [*self.segments, self.pending] if len(self.pending) else list(self.segments)

    def _alive_mask(self, segment: Segment) -> np.ndarray:
        """Which rows of ``segment`` are not removed."""
        key = id(segment)
        if key not in self._alive:
            if self.dead and segment is not self.pending:
                dead = np.fromiter(self.dead, dtype=np.int64, count=len(self.dead))
                self._alive[key] = ~np.isin(segment.fids, dead)
            else:
                self._alive[key] = np.ones(len(segment), dtype=bool)
        return self._alive[key]

    def _fids_of(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        """Vector ids of the chunks (of ``chunk_ids``) this store holds and has not removed."""
        out: dict[str, int] = {}
        for s in self._all():
            found = s.fid_of([c for c in chunk_ids if c not in out])
            out.update((c, f) for c, f in found.items() if f not in self.dead)
        return out

    def _fetch(self, fids: Sequence[int]) -> dict[int, Chunk]:
        """Chunks by vector id, read from the segments that hold them."""
        out: dict[int, Chunk] = {}
        want = np.asarray(list(fids), dtype=np.int64)
        for s in self._all():
            if len(want) and len(s):
                out.update(s.chunks_by_fid(want[s.holds(want)].tolist()))
        return out

    def _iter_ids(self) -> Iterator[tuple[int, str]]:
        """``(fid, chunk id)`` of every live chunk, in fid order."""
        for s in self._all():
            for fid, cid in s.iter_ids():
                if fid not in self.dead:
                    yield fid, cid

    def _iter_chunks(self) -> Iterator[tuple[int, Chunk]]:
        for s in self._all():
            for fid, chunk in s.iter_chunks():
                if fid not in self.dead:
                    yield fid, chunk

    def vector_count(self) -> int:
        """Vectors in the dense indexes, less the removed ones: equal to ``len(self)`` in a consistent index."""
        return sum(s.dense_index().ntotal for s in self._all()) - len(self.dead)

    def search_dense(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[Chunk, float]]]:
        """Top-k chunks by inner product (cosine on normalised vectors), for each query vector.

        Each segment is searched for its k best live rows (removed rows filtered inside FAISS, so a
        segment with many removals still yields k), and the lists are merged: exact over exact segments;
        IVF segments search ``self.nprobe`` of their lists.
        """
        q = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if not len(self):
            return [[] for _ in range(len(q))]
        found: list[list[tuple[float, int]]] = [[] for _ in range(len(q))]
        for s in self._all():
            alive = self._alive_mask(s)
            n_alive = int(alive.sum())
            if not n_alive:
                continue
            scores, fids = self._search_segment(s, q, min(k, n_alive), alive)
            for row, (rs, rf) in enumerate(zip(scores, fids)):
                found[row].extend((float(sc), int(f)) for sc, f in zip(rs, rf) if f >= 0)
        return [self._ranked(hits, k) for hits in found]

    def _ranked(self, hits: Sequence[tuple[float, int]], k: int) -> list[tuple[Chunk, float]]:
        """The best ``k`` of ``(score, fid)`` hits from several segments (ties: older first), as chunks."""
        top = sorted(hits, key=lambda h: (-h[0], h[1]))[:k]
        chunks = self._fetch([f for _, f in top])
        return [(chunks[f], sc) for sc, f in top if f in chunks]

    def _search_segment(self, s: Segment, q: np.ndarray, k: int, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        index = s.dense_index()
        if not alive.all():  # leave the removed rows out inside FAISS, so k live rows come back
            params = faiss.SearchParametersIVF(nprobe=self.nprobe) if s.approximate else faiss.SearchParameters()
            params.sel = self._removed_selector(s, alive)
            return index.search(q, k, params=params)
        if s.approximate:
            return index.search(q, k, params=faiss.SearchParametersIVF(nprobe=self.nprobe))
        gpu = self._gpu_index(s, index)
        return gpu.search(q, k)

    def _removed_selector(self, s: Segment, alive: np.ndarray) -> Any:
        """A FAISS selector of the live rows of ``s``, built once per change, not per question (a batch of
        100k removed ids costs milliseconds to hash). The id array and the inner selector are kept with it:
        the selectors read them while searching."""
        if id(s) not in self._selectors:
            faiss = import_faiss()
            dead = np.ascontiguousarray(s.fids[~alive], dtype=np.int64)
            batch = faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead))
            self._selectors[id(s)] = (dead, batch, faiss.IDSelectorNot(batch))
        return self._selectors[id(s)][2]

    def _gpu_index(self, s: Segment, index: Any) -> Any:
        """The exact index of ``s`` on the GPU once when faiss sees one (the ``[gpu]`` extra), else as is."""
        faiss = import_faiss()
        if id(s) not in self._gpu:
            self._gpu[id(s)] = index
            if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
                self._gpu_resources = getattr(self, "_gpu_resources", None) or faiss.StandardGpuResources()
                self._gpu[id(s)] = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        return self._gpu[id(s)]

    def doc_freq(self, terms: Iterable[str]) -> dict[str, int]:
        """How many live chunks hold each term (BM25's document frequency; 0 for an unknown term)."""
        terms = list(dict.fromkeys(terms))
        df = dict.fromkeys(terms, 0)
        for s in self._all():
            alive = self._alive_mask(s)
            for term, col in s.columns(terms).items():
                rows, _ = s.postings(col)
                df[term] += int(alive[rows].sum())
        return df

    def terms_of(self, chunk_ids: Sequence[str], terms: Iterable[str]) -> dict[str, set[str]]:
        """Which of ``terms`` each chunk holds (its BM25 words), read from the postings: what ingest indexed,
        without tokenising the chunks again."""
        terms = list(dict.fromkeys(terms))
        fids = self._fids_of(list(chunk_ids))
        by_fid = {f: c for c, f in fids.items()}
        out: dict[str, set[str]] = {c: set() for c in fids}
        want = np.fromiter(by_fid, dtype=np.int64, count=len(by_fid))
        for s in self._all():
            mine = want[s.holds(want)]
            if not len(mine):
                continue
            for term, col in s.columns(terms).items():
                rows, _ = s.postings(col)
                for f in np.intersect1d(s.fids[rows], mine).tolist():
                    out[by_fid[f]].add(term)
        return out

    def search_bm25(self, query_tokens: list[str], k: int) -> list[tuple[Chunk, float]]:
        """Top-k chunks by BM25 (Lucene's idf and length normalisation, k1 1.5, b 0.75), over all segments at once.

        Statistics are those of the whole live index (document count, average length and each term's
        document frequency summed over segments, removed rows left out), so scores equal a single BM25
        index over the same chunks. A term repeated in the query counts each time, as in bm25s.
        """
        segments = [s for s in self._all() if len(s)]
        if not query_tokens or not segments:
            return []
        masks = [self._alive_mask(s) for s in segments]
        n_docs = sum(int(m.sum()) for m in masks)
        if not n_docs:
            return []
        avgdl = sum(float(np.asarray(s.doclen, dtype=np.float64)[m].sum()) for s, m in zip(segments, masks)) / n_docs
        cols = [s.columns(query_tokens) for s in segments]
        df = Counter[str]()
        for s, m, c in zip(segments, masks, cols):
            for term, col in c.items():
                df[term] += int(m[s.postings(col)[0]].sum())
        idf = {t: math.log(1 + (n_docs - d + 0.5) / (d + 0.5)) for t, d in df.items() if d}
        found: list[tuple[float, int]] = []
        for s, m, c in zip(segments, masks, cols):
            scores: np.ndarray | None = None
            for term in query_tokens:
                if term not in c or term not in idf:
                    continue
                rows, tfs = s.postings(c[term])
                tf = np.asarray(tfs, dtype=np.float32)
                dl = np.asarray(s.doclen)[rows]
                if scores is None:
                    scores = np.zeros(len(s), dtype=np.float32)
                scores[rows] += np.float32(idf[term]) * tf / (tf + BM25_K1 * (1 - BM25_B + BM25_B * dl / avgdl))
            if scores is None:
                continue
            scores[~m] = 0
            n_pos = int(np.count_nonzero(scores))
            kk = min(k, n_pos)
            if not kk:
                continue
            top = np.argpartition(-scores, kk - 1)[:kk]  # kk <= the positive scores: every one is > 0
            found.extend((float(scores[r]), int(s.fids[r])) for r in top)
        return self._ranked(found, k)

    def gate_text(self) -> str:
        """The Latin-script runs of every chunk (:func:`ragbot.segments.gate_runs`), for the key-term gate.

        Built at ingest and stored with each segment; a removed chunk's runs stay until compaction, so the
        gate may let a question through that only a removed chunk matched (the model then says it does not know).
        """
        return "\n".join(s.gate_text() for s in self._all())

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        record = self.manifest.files.get(doc_id)
        if not record:
            return []
        fids = self._fids_of(list(record.chunk_ids))
        chunks = self._fetch(list(fids.values()))
        return [chunks[fids[c]] for c in record.chunk_ids if c in fids and fids[c] in chunks]


class ChunkView(Mapping[str, Chunk]):
    """``store.chunks``: the live chunks by id, read from the segments when asked (nothing is held in memory)."""

    def __init__(self, store: IndexStore) -> None:
        self._store = store

    def __getitem__(self, chunk_id: str) -> Chunk:
        fid = self._store._fids_of([chunk_id]).get(chunk_id)
        if fid is None:
            raise KeyError(chunk_id)
        return self._store._fetch([fid])[fid]

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and chunk_id in self._store._fids_of([chunk_id])

    def __iter__(self) -> Iterator[str]:
        for _, cid in self._store._iter_ids():
            yield cid

    def __len__(self) -> int:
        return len(self._store)

    def values(self) -> Iterator[Chunk]:  # type: ignore[override]
        for _, chunk in self._items():
            yield chunk

    def items(self) -> Iterator[tuple[str, Chunk]]:  # type: ignore[override]
        for _, chunk in self._items():
            yield chunk.id, chunk

    def _items(self) -> Iterator[tuple[int, Chunk]]:
        return self._store._iter_chunks()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())


@dataclass(frozen=True)
class CompactReport:
    segments_before: int
    segments_after: int
    removed_rows_dropped: int
    seconds: float


def _read_version_1(version: Path, manifest: Manifest) -> IndexStore:
    """An index saved before segments (one ``chunks.jsonl`` + ``dense.faiss`` per version): read whole into memory;
    its next save writes it as one segment."""
    faiss = import_faiss()
    name = version.name
    rows: list[tuple[int, Chunk, list[str]]] = []
    try:
        with open(version / "chunks.jsonl", encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, start=1):
                row = json.loads(line)
                rows.append((row["fid"], Chunk.from_dict(row["chunk"]), row["tokens"]))
        dense = faiss.read_index(str(version / "dense.faiss"))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise IndexCorruptError(f"version {name} is damaged ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    fids, vectors = index_vectors(dense)
    by_fid = {f: r for r in rows for f in [r[0]]}
    if len(fids) != len(rows) or set(fids.tolist()) != set(by_fid) or len({r[1].id for r in rows}) != len(rows):
        raise IndexCorruptError(f"version {name} is inconsistent: {len(fids)} vectors for {len(rows)} chunks")
    store = IndexStore(dataclasses.replace(manifest, format_version=FORMAT_VERSION))
    store.pending.dim = vectors.shape[1]
    store.pending.add(fids.tolist(), [by_fid[f][1] for f in fids.tolist()], vectors,
                      [by_fid[f][2] for f in fids.tolist()])
    listed = {c for r in manifest.files.values() for c in r.chunk_ids}
    if listed != {r[1].id for r in rows}:
        raise IndexCorruptError(f"version {name} is inconsistent: the manifest lists {len(listed)} chunks, "
                                f"the chunk file holds {len(rows)}")
    store.version = name
    return store


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
    segments: int = 0
    removed_rows: int = 0  # tombstones: rows removed but still on disk until compaction


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


# Stores whose data lives in an engine: manifest backend "kind" -> the module that implements it, imported only
# when an index uses it. Each module provides from_version(version, manifest) -> IndexStore and
# drop_unused_collections(index_path, backends_still_named).
BACKENDS = {"milvus": "ragbot.milvus"}


def _backend(backend: dict[str, Any]) -> Any:
    import importlib

    kind = backend.get("kind")
    if kind not in BACKENDS:
        raise IndexCorruptError(f"the index names an unknown store {kind!r}; this ragbot knows: local, "
                                f"{', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[kind])


def _small_runs(segments: Sequence[DiskSegment]) -> list[list[DiskSegment]]:
    """Runs of two or more consecutive exact (small) segments, in vector-id order."""
    runs: list[list[DiskSegment]] = [[]]
    for s in segments:
        if s.approximate:
            runs.append([])
        else:
            runs[-1].append(s)
    return [r for r in runs if len(r) > 1]


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
