"""Index segments: the chunks, vectors and BM25 postings of one batch of chunks, written once and never changed.

An index (:mod:`ragbot.store`) is a list of segments plus tombstones (the vector ids of removed chunks).
A segment folder holds::

    chunks.sqlite   chunks by vector id (``fid``) and chunk id; the BM25 vocabulary (term -> column)
    dense.faiss     the vectors, ids = fids: exact (flat) below ``ann_min``, IVF above (see :class:`AnnParams`)
    fids.npy        row -> fid (ascending), doclen.npy: BM25 document lengths
    indptr.npy rows.npy tfs.npy   BM25 postings, one column per term (CSC): rows holding it, its counts there
    gate.txt        the Latin-script runs of the squashed text, for the key-term gate (:mod:`ragbot.grounding`)
    meta.json       counts and parameters, and the size of every file above (a truncated file is caught on open)

Arrays are memory-mapped and chunks are read from SQLite by id, so opening a segment reads almost nothing
and a question touches only its hits. :class:`MemorySegment` is the same interface over chunks added in this
process and not saved yet; :func:`write_segment` turns chunks, vectors and tokens into a folder.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragbot.errors import IndexCorruptError
from ragbot.text import squash
from ragbot.types import Chunk

BM25_K1, BM25_B = 1.5, 0.75  # bm25s's defaults (Lucene variant), which ragbot used before segments
_ARRAYS = ("fids", "doclen", "indptr", "rows", "tfs")
_RUN = re.compile(r"[a-z0-9+.]+")


def gate_runs(texts: Iterable[str]) -> set[str]:
    """The maximal runs of ``[a-z0-9+.]`` in each squashed text.

    A squashed key term (:func:`ragbot.grounding.key_terms`) is made of those characters only, so it occurs in
    ``squash(text)`` exactly when it occurs in one of these runs: the gate needs them, not the whole text.
    """
    return {run for t in texts for run in _RUN.findall(squash(t))}


@dataclass(frozen=True)
class AnnParams:
    """When and how a segment's vectors get an approximate (IVF) index instead of an exact one.

    ``ann_min``: segments with at least this many vectors are IVF; ``nlist`` lists ≈ ``4·sqrt(n)``, trained
    with k-means on at most ``train_per_list`` vectors per list (a random sample). ``nprobe`` is a search-time
    setting, recorded here only as the default the index was measured with.
    """

    ann_min: int = 50_000
    nprobe: int = 64  # recall@10 0.95 at 1M chunks (bench/scale.py; README "Scale")
    train_per_list: int = 40
    seed: int = 0

    def nlist(self, n: int) -> int:
        return max(1, min(n // 39, int(4 * np.sqrt(n))))


def import_faiss() -> Any:
    """faiss comes from one of two extras (CPU or GPU build); say which to install when neither is."""
    try:
        import faiss
    except ImportError:
        from ragbot.errors import MissingExtraError

        raise MissingExtraError(
            "faiss is not installed: pip install 'ragbot[cpu]' (or 'ragbot[gpu]' on a machine with a CUDA GPU)"
        ) from None
    return faiss


# ---- postings -------------------------------------------------------------------------------------------
def build_postings(token_lists: Sequence[Sequence[str]]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """BM25 postings of documents given as token lists: ``(vocab term -> column, arrays)``.

    ``arrays``: ``doclen`` (tokens per document; an empty one counts 1, as bm25s counted it), and the
    CSC columns ``indptr`` / ``rows`` / ``tfs``: column ``c`` holds ``rows[indptr[c]:indptr[c+1]]``, ascending.
    """
    vocab: dict[str, int] = {}
    cols: list[int] = []
    rows: list[int] = []
    tfs: list[int] = []
    doclen = np.empty(len(token_lists), dtype=np.float32)
    for r, toks in enumerate(token_lists):
        doclen[r] = len(toks) or 1
        for term, tf in Counter(toks).items():
            cols.append(vocab.setdefault(term, len(vocab)))
            rows.append(r)
            tfs.append(tf)
    col_arr = np.asarray(cols, dtype=np.int64)
    order = np.argsort(col_arr, kind="stable")  # by column, rows ascending within one (they were appended in order)
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(np.bincount(col_arr, minlength=len(vocab)), out=indptr[1:])
    return vocab, {"doclen": doclen, "indptr": indptr, "rows": np.asarray(rows, dtype=np.int32)[order],
                   "tfs": np.minimum(np.asarray(tfs, dtype=np.int64)[order], 65535).astype(np.uint16)}


# ---- the segment interface ---------------------------------------------------------------------------------
class Segment:
    """What search and the store need of a segment; :class:`DiskSegment` and :class:`MemorySegment` provide it."""

    name: str
    fids: np.ndarray  # row -> fid, ascending
    doclen: np.ndarray

    def __len__(self) -> int:
        return len(self.fids)

    def holds(self, fids: np.ndarray) -> np.ndarray:
        """Which of ``fids`` are in this segment (alive or not)."""
        if not len(self.fids):
            return np.zeros(len(fids), dtype=bool)
        r = np.minimum(np.searchsorted(self.fids, fids), len(self.fids) - 1)
        return self.fids[r] == fids

    # implemented by subclasses
    def columns(self, terms: Sequence[str]) -> dict[str, int]:
        raise NotImplementedError

    def postings(self, col: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def chunks_by_fid(self, fids: Sequence[int]) -> dict[int, Chunk]:
        raise NotImplementedError

    def fid_of(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        raise NotImplementedError

    def iter_ids(self) -> Iterator[tuple[int, str]]:
        """``(fid, chunk id)`` of every row, in fid order."""
        raise NotImplementedError

    def iter_chunks(self, batch: int = 2000) -> Iterator[tuple[int, Chunk]]:
        raise NotImplementedError

    def gate_text(self) -> str:
        raise NotImplementedError

    def dense_index(self) -> Any:
        raise NotImplementedError

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(fids, vectors)`` in fid order, read back from the dense index (for compaction)."""
        return index_vectors(self.dense_index())

    @property
    def approximate(self) -> bool:
        return False


class MemorySegment(Segment):
    """Chunks added in this process, not saved yet: searched like a saved segment, written by :func:`write_segment`."""

    name = "(unsaved)"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._chunks: dict[int, Chunk] = {}
        self._tokens: dict[int, list[str]] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self._ids: dict[str, int] = {}
        self._cache: dict[str, Any] | None = None

    def add(self, fids: Sequence[int], chunks: Sequence[Chunk], vectors: np.ndarray, tokens: Sequence[list[str]]) -> None:
        for fid, chunk, vec, toks in zip(fids, chunks, vectors, tokens):
            self._chunks[fid], self._tokens[fid], self._vectors[fid] = chunk, list(toks), np.asarray(vec, np.float32)
            self._ids[chunk.id] = fid
        self._cache = None

    def remove(self, fids: Iterable[int]) -> None:
        for fid in fids:
            chunk = self._chunks.pop(fid)
            del self._tokens[fid], self._vectors[fid], self._ids[chunk.id]
        self._cache = None

    def clear(self) -> None:
        self._chunks, self._tokens, self._vectors, self._ids, self._cache = {}, {}, {}, {}, None

    def _built(self) -> dict[str, Any]:
        if self._cache is None:
            order = sorted(self._chunks)
            vocab, arrays = build_postings([self._tokens[f] for f in order])
            vecs = np.stack([self._vectors[f] for f in order]) if order else np.zeros((0, self.dim), np.float32)
            self._cache = {"vocab": vocab, **arrays, "fids": np.asarray(order, dtype=np.int64), "vectors": vecs,
                           "dense": None}
        return self._cache

    @property
    def fids(self) -> np.ndarray:  # type: ignore[override]
        return self._built()["fids"]

    @property
    def doclen(self) -> np.ndarray:  # type: ignore[override]
        return self._built()["doclen"]

    def columns(self, terms: Sequence[str]) -> dict[str, int]:
        vocab = self._built()["vocab"]
        return {t: vocab[t] for t in terms if t in vocab}

    def postings(self, col: int) -> tuple[np.ndarray, np.ndarray]:
        b = self._built()
        lo, hi = b["indptr"][col], b["indptr"][col + 1]
        return b["rows"][lo:hi], b["tfs"][lo:hi]

    def chunks_by_fid(self, fids: Sequence[int]) -> dict[int, Chunk]:
        return {f: self._chunks[f] for f in fids if f in self._chunks}

    def fid_of(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        return {c: self._ids[c] for c in chunk_ids if c in self._ids}

    def iter_ids(self) -> Iterator[tuple[int, str]]:
        for f in sorted(self._chunks):
            yield f, self._chunks[f].id

    def iter_chunks(self, batch: int = 2000) -> Iterator[tuple[int, Chunk]]:
        for f in sorted(self._chunks):
            yield f, self._chunks[f]

    def vocabulary(self) -> dict[str, int]:
        return dict(self._built()["vocab"])

    def postings_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = self._built()
        return b["indptr"], b["rows"], b["tfs"]

    def gate_text(self) -> str:
        return "\n".join(sorted(gate_runs(c.embedding_text() for c in self._chunks.values())))

    def dense_index(self) -> Any:
        b = self._built()
        if b["dense"] is None:
            b["dense"] = flat_index(self.dim, b["fids"], b["vectors"])
        return b["dense"]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        b = self._built()
        return b["fids"], b["vectors"]


class DiskSegment(Segment):
    """A saved segment folder, opened read-only (SQLite ``immutable``, arrays and FAISS memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        faiss = import_faiss()
        self.folder = Path(folder)
        self.name = self.folder.name
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
            for fname, size in self.meta["files"].items():
                actual = (self.folder / fname).stat().st_size
                if actual != size:
                    raise ValueError(f"{fname} has {actual} bytes, {size} were written")
            arrays = {a: np.load(self.folder / f"{a}.npy", mmap_mode="r") for a in _ARRAYS}
            flag = faiss.IO_FLAG_MMAP if self.meta["dense"] == "ivf" else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
            self._dense = faiss.read_index(str(self.folder / "dense.faiss"), flag)
            uri = f"file:{self.folder / 'chunks.sqlite'}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            rows = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            self._gate = (self.folder / "gate.txt").read_text(encoding="utf-8")  # now: the folder may go later
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, sqlite3.Error) as e:
            raise IndexCorruptError(f"segment {self.name} is damaged ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.fids, self.doclen = arrays["fids"], arrays["doclen"]
        self._indptr, self._rows, self._tfs = arrays["indptr"], arrays["rows"], arrays["tfs"]
        n = self.meta["count"]
        problems = [f"{got} {what}" for what, got in (("vectors", self._dense.ntotal), ("chunks", rows),
                                                      ("ids", len(self.fids)), ("lengths", len(self.doclen)))
                    if got != n]
        if problems:
            raise IndexCorruptError(f"segment {self.name} is inconsistent: {', '.join(problems)} for {n} rows")

    @property
    def approximate(self) -> bool:
        return self.meta["dense"] == "ivf"

    def columns(self, terms: Sequence[str]) -> dict[str, int]:
        terms = list(dict.fromkeys(terms))
        if not terms:
            return {}
        marks = ",".join("?" * len(terms))
        return dict(self._db.execute(f"SELECT term, col FROM terms WHERE term IN ({marks})", terms).fetchall())

    def postings(self, col: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self._indptr[col]), int(self._indptr[col + 1])
        return self._rows[lo:hi], self._tfs[lo:hi]

    def chunks_by_fid(self, fids: Sequence[int]) -> dict[int, Chunk]:
        out: dict[int, Chunk] = {}
        fids = [int(f) for f in fids]
        for i in range(0, len(fids), 500):
            part = fids[i:i + 500]
            marks = ",".join("?" * len(part))
            for fid, data in self._db.execute(f"SELECT fid, data FROM chunks WHERE fid IN ({marks})", part):
                out[fid] = Chunk.from_dict(json.loads(data))
        return out

    def fid_of(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        ids = list(chunk_ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            found = self._db.execute(f"SELECT id, fid FROM chunks WHERE id IN ({marks})", [_key(c) for c in part])
            out.update((_unkey(k), f) for k, f in found)
        return out

    def iter_ids(self) -> Iterator[tuple[int, str]]:
        for fid, key in self._db.execute("SELECT fid, id FROM chunks ORDER BY fid"):
            yield fid, _unkey(key)

    def iter_chunks(self, batch: int = 2000) -> Iterator[tuple[int, Chunk]]:
        for fid, data in self._db.execute("SELECT fid, data FROM chunks ORDER BY fid"):
            yield fid, Chunk.from_dict(json.loads(data))

    def vocabulary(self) -> dict[str, int]:
        """Every term of this segment and its column (for compaction)."""
        return dict(self._db.execute("SELECT term, col FROM terms"))

    def postings_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.asarray(self._indptr), np.asarray(self._rows), np.asarray(self._tfs)

    def gate_text(self) -> str:
        return self._gate

    def dense_index(self) -> Any:
        return self._dense



def _key(text: str) -> bytes:
    """Ids and paths as UTF-8 bytes, keeping lone surrogates (how Python spells undecodable file names)."""
    return text.encode("utf-8", "surrogatepass")


def _unkey(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _chunk_json(chunk: Chunk) -> str:
    """The chunk as JSON, CJK readable; escaped when it holds a lone surrogate (SQLite text must be valid UTF-8)."""
    text = json.dumps(chunk.to_dict(), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(chunk.to_dict(), ensure_ascii=True)
    return text


# ---- dense indexes -------------------------------------------------------------------------------------------
def flat_index(dim: int, fids: np.ndarray, vectors: np.ndarray) -> Any:
    faiss = import_faiss()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if len(fids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(fids, dtype=np.int64))
    return index


def ivf_index(dim: int, fids: np.ndarray, vectors: np.ndarray, ann: AnnParams) -> Any:
    """An IVF-Flat index (exact distances within the lists searched), its quantiser trained on a sample."""
    faiss = import_faiss()
    nlist = ann.nlist(len(fids))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(ann.seed)
    n_train = min(len(fids), nlist * ann.train_per_list)
    sample = np.sort(rng.choice(len(fids), n_train, replace=False))
    index.cp.seed = ann.seed
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for i in range(0, len(fids), 100_000):
        index.add_with_ids(np.ascontiguousarray(vectors[i:i + 100_000], dtype=np.float32),
                           np.asarray(fids[i:i + 100_000], dtype=np.int64))
    index.nprobe = ann.nprobe
    return index


def index_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fids, vectors)`` held by a flat (IDMap2) or IVF-Flat index, in fid order."""
    faiss = import_faiss()
    if isinstance(index, faiss.IndexIDMap2) or hasattr(index, "id_map"):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
        vecs = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else np.zeros((0, inner.d), np.float32)
    else:
        ivf = faiss.extract_index_ivf(index)
        inv, parts_i, parts_v = ivf.invlists, [], []
        for lst in range(ivf.nlist):
            m = inv.list_size(lst)
            if m:
                parts_i.append(faiss.rev_swig_ptr(inv.get_ids(lst), m).copy())
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), m * inv.code_size).copy()
                parts_v.append(codes.view(np.float32).reshape(m, ivf.d))
        ids = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
        vecs = np.concatenate(parts_v) if parts_v else np.zeros((0, ivf.d), np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]


# ---- writing -------------------------------------------------------------------------------------------------
def merge_postings(parts: Sequence[tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                   ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Postings of several segments' kept rows as one: ``parts`` are ``(vocab, indptr, rows, tfs, keep)``
    per segment in row order (``keep``: a mask over its rows). Exact: the same as :func:`build_postings`
    over the kept documents (``doclen`` is not part of it; the caller concatenates the kept lengths)."""
    vocab: dict[str, int] = {}
    all_cols, all_rows, all_tfs = [], [], []
    offset = 0
    for seg_vocab, indptr, rows, tfs, keep in parts:
        new_row = np.cumsum(keep) - 1 + offset  # kept row -> its row in the merged segment
        to_col = np.empty(len(seg_vocab), dtype=np.int64)
        for term, col in seg_vocab.items():
            to_col[col] = vocab.setdefault(term, len(vocab))
        cols = np.repeat(to_col, np.diff(indptr))
        kept = keep[rows]
        all_cols.append(cols[kept])
        all_rows.append(new_row[rows[kept]].astype(np.int32))
        all_tfs.append(tfs[kept])
        offset += int(keep.sum())
    cols = np.concatenate(all_cols) if all_cols else np.zeros(0, np.int64)
    rows = np.concatenate(all_rows) if all_rows else np.zeros(0, np.int32)
    tfs = np.concatenate(all_tfs) if all_tfs else np.zeros(0, np.uint16)
    order = np.lexsort((rows, cols))
    counts = np.bincount(cols, minlength=len(vocab))
    used = counts > 0  # terms only deleted rows had are dropped
    remap = np.cumsum(used) - 1
    vocab = {t: int(remap[c]) for t, c in vocab.items() if used[c]}
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(counts[used], out=indptr[1:])
    return vocab, {"indptr": indptr, "rows": rows[order], "tfs": tfs[order]}


def write_segment(folder: Path, dim: int, rows: Iterable[tuple[int, Chunk]], vectors: np.ndarray,
                  vocab: dict[str, int], arrays: dict[str, np.ndarray], ann: AnnParams | None = None) -> None:
    """Write one segment into the new folder ``folder`` (every file fsynced; the caller renames it into place).

    ``rows`` are ``(fid, chunk)`` in ascending fid order; ``vectors`` and the postings (``vocab`` and
    ``arrays`` from :func:`build_postings` or :func:`merge_postings`, with ``doclen``) in the same order.
    """
    folder.mkdir(parents=True)
    db = sqlite3.connect(folder / "chunks.sqlite")
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")  # a new file, fsynced below before anything refers to it
        db.execute("CREATE TABLE chunks (fid INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, doc_id BLOB NOT NULL, "
                   "data TEXT NOT NULL)")
        db.execute("CREATE TABLE terms (term TEXT PRIMARY KEY, col INTEGER NOT NULL) WITHOUT ROWID")
        fids: list[int] = []
        runs: set[str] = set()

        def chunk_rows() -> Iterator[tuple[int, str, str, str]]:
            for fid, chunk in rows:
                fids.append(fid)
                runs.update(gate_runs([chunk.embedding_text()]))
                yield fid, _key(chunk.id), _key(chunk.doc_id), _chunk_json(chunk)

        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)", chunk_rows())
        if len(arrays["doclen"]) != len(fids) or len(vectors) != len(fids):
            raise ValueError(f"{len(fids)} chunks, {len(vectors)} vectors and {len(arrays['doclen'])} documents")
        db.executemany("INSERT INTO terms VALUES (?, ?)", vocab.items())
        db.commit()
    finally:
        db.close()
    fid_arr = np.asarray(fids, dtype=np.int64)
    arrays = {**arrays, "fids": fid_arr}
    for a in _ARRAYS:
        np.save(folder / f"{a}.npy", arrays[a])
    faiss = import_faiss()
    ann = ann or AnnParams()
    approximate = len(fid_arr) >= ann.ann_min
    index = ivf_index(dim, fid_arr, vectors, ann) if approximate else flat_index(dim, fid_arr, vectors)
    faiss.write_index(index, str(folder / "dense.faiss"))
    (folder / "gate.txt").write_text("\n".join(sorted(runs)), encoding="utf-8")
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    meta = {"count": len(fid_arr), "dim": dim, "dense": "ivf" if approximate else "flat",
            "nlist": index.nlist if approximate else 0, "files": files}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
