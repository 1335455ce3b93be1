"""Milvus as the index's storage (``store = "milvus:PATH.db"`` for Milvus Lite, ``"milvus://HOST:PORT"`` for a
Standalone or Distributed server): chunks, their vectors and their BM25 index live in one Milvus collection;
what an index *is* (the manifest: files, spec, versions, tombstones) stays in the local index folder, versioned
and published exactly as for the local store (:mod:`ragbot.store`).

The collection holds one row per chunk: ``fid`` (primary key, the vector id), ``chunk_id``, ``doc_id``, ``data``
(the chunk as JSON), ``text`` (what the embedder saw, analysed by Milvus's jieba tokenizer in search mode,
lower-cased: Milvus's own BM25 full-text search), ``sparse`` (BM25, made by Milvus) and ``dense`` (the vector).

Versions on top of a mutable engine, without copying: a version sees the rows with ``fid < visible_below`` (its
``next_fid`` when it was published) that are neither tombstoned nor in its ``hidden`` ranges. So a save inserts
the new rows (invisible until the manifest that counts them is published) and records removals as tombstones;
a crash at any moment leaves the old or the new version, and ``ragbot index rollback`` works as for local
segments. Vector ids are never reused: a store opened from an older version (a rollback) numbers new rows
above every version on disk and hides the rows in between, which belong to the versions rolled back from.
Rows a crashed writer inserted but no version names are deleted by the next save. ``ragbot index compact``
first removes the earlier versions, then deletes from Milvus every row the live version does not see (readers
still on an earlier version may then miss rows). Each index creates its own collections (random names, listed
in ``milvus.json`` in the index folder) and drops only those, once no version names them.

What stays local and why: the key-term gate's runs (per file, in the manifest: Milvus has no substring search
over a whole collection) and the writer lock (one writer per index folder). BM25 scores are Milvus's (its
jieba, its statistics), so rankings differ slightly from the local store's; the reranker's idf feature uses
Milvus's ``TEXT_MATCH`` counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragbot.errors import ConfigError, IndexCorruptError, MissingExtraError, RagbotError, StoreUnavailableError
from ragbot.segments import gate_runs
from ragbot.store import CompactReport, IndexSpec, IndexStore, Manifest
from ragbot.types import Chunk

ANALYZER = {"tokenizer": {"type": "jieba", "mode": "search"}, "filter": ["lowercase"]}
_CLIENTS: dict[str, Any] = {}
_BATCH = 1000
_MAX_K = 16_384  # Milvus's largest search limit


def milvus_uri(store: str) -> str:
    """The pymilvus URI of a ``store`` setting: a Milvus Lite file for ``milvus:PATH.db``, a server for
    ``milvus://HOST:PORT``; :class:`ConfigError` naming the forms otherwise."""
    if store.startswith("milvus://"):
        return "http://" + store[len("milvus://"):]
    if store.startswith("milvus:") and store[len("milvus:"):].strip():
        return str(Path(store[len("milvus:"):]).expanduser().resolve())
    raise ConfigError(f"store ({store!r}) must be \"local\", \"milvus:PATH.db\" (Milvus Lite, a file) or "
                      "\"milvus://HOST:PORT\" (a Milvus server), e.g. RAGBOT_STORE=milvus:./ragbot.db")


def client(uri: str) -> Any:
    """One pymilvus client per URI in this process (Milvus Lite starts its engine once per file)."""
    if uri not in _CLIENTS:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise MissingExtraError("the Milvus store needs pymilvus: pip install 'ragbot[milvus]'") from None
        if not _CLIENTS:
            import atexit

            atexit.register(_close_clients)  # a client left open makes gRPC complain at interpreter exit
        try:
            _CLIENTS[uri] = MilvusClient(uri)
        except Exception as e:  # the engine's own errors: unreachable server, a Lite file another process holds
            hint = ("Milvus Lite serves one process at a time: close the other one (the web app or another "
                    "ragbot command), or use a Milvus server (store = \"milvus://HOST:PORT\")"
                    if not uri.startswith("http") else
                    "start the server (docker compose --profile milvus up) or check the store setting")
            raise ConfigError(f"cannot open Milvus at {uri} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              f"{hint}") from None
    return _CLIENTS[uri]


def _close_clients() -> None:
    for c in _CLIENTS.values():
        try:
            c.close()
        except Exception:  # closing at exit must never raise
            pass
    _CLIENTS.clear()


def _engine_errors(fn):
    """Milvus's own exceptions (a server gone, a rejected request) as one line that says what to check."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RagbotError:
            raise
        except Exception as e:
            if not type(e).__module__.startswith(("pymilvus", "grpc", "milvus")):
                raise
            raise StoreUnavailableError(f"Milvus failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                                        "check that the server in the store setting is running") from None
    return wrapper


def _safe(text: str) -> str:
    """Milvus strings must be valid UTF-8: a lone surrogate (an undecodable file name) becomes its escape. Used
    the same way on what is stored and what is looked up; the chunk itself is stored as ASCII JSON, losslessly."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace") if any(
        "\ud800" <= ch <= "\udfff" for ch in text) else text


class MilvusStore(IndexStore):
    """An :class:`IndexStore` whose chunks, vectors and BM25 live in a Milvus collection (module docstring)."""

    def __init__(self, manifest: Manifest, tombstones: Iterable[int] = ()) -> None:
        super().__init__(manifest, (), tombstones)
        self.uri = manifest.backend["uri"]
        self.collection = manifest.backend["collection"]
        self.visible_below = int(manifest.backend.get("visible_below", 0))
        self.hidden = [tuple(r) for r in manifest.backend.get("hidden", ())]
        self._new_gate: dict[str, set[str]] = {}
        self._cleaned = False  # rows no version names deleted (once per writer, before its first insert)

    @classmethod
    def create(cls, spec: IndexSpec, store: str, index_path: Path) -> MilvusStore:
        """An empty index in a new collection (a rebuild too: the live version keeps its own until published)."""
        now = time.time()
        backend = {"kind": "milvus", "uri": milvus_uri(store), "visible_below": 0, "rows": 0, "gate": {},
                   "hidden": [], "collection": f"ragbot_{uuid.uuid4().hex[:20]}"}
        return cls(Manifest(spec, {}, 0, now, now, backend=backend))

    @classmethod
    def from_version(cls, version: Path, manifest: Manifest) -> MilvusStore:
        try:
            tombstones = np.load(version / "tombstones.npy")
        except (OSError, ValueError) as e:
            raise IndexCorruptError(f"version {version.name} is damaged ({type(e).__name__}: {e})") from None
        high = max([manifest.next_fid, *_next_fids(version.parent)])
        if high > manifest.next_fid:  # opened from an older version: never reuse the ids of newer ones
            manifest = dataclasses.replace(manifest, next_fid=high)
        store = cls(manifest, tombstones.tolist())
        listed = sum(len(r.chunk_ids) for r in manifest.files.values())
        if listed != len(store):
            raise IndexCorruptError(f"version {version.name} is inconsistent: the manifest lists {listed} chunks, "
                                    f"Milvus holds {len(store)} for it")
        store.version = version.name
        return store

    # ---- Milvus -------------------------------------------------------------------------------
    def _client(self, create: bool = False) -> Any:
        c = client(self.uri)
        if not c.has_collection(self.collection):
            if not create or self.visible_below:
                raise IndexCorruptError(f"Milvus at {self.uri} has no collection {self.collection}, which this index "
                                        "keeps its chunks in; re-ingest: ragbot ingest PATH... --rebuild")
            self._create_collection(c)
        return c

    def _create_collection(self, c: Any) -> None:
        from pymilvus import DataType, Function, FunctionType

        schema = c.create_schema(auto_id=False)
        schema.add_field("fid", DataType.INT64, is_primary=True)
        schema.add_field("chunk_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=4096)
        schema.add_field("data", DataType.VARCHAR, max_length=65535)
        schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True, enable_match=True,
                         analyzer_params=ANALYZER)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.manifest.spec.dim)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                     output_field_names=["sparse"]))
        index = c.prepare_index_params()
        index.add_index("dense", index_type="AUTOINDEX", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        c.create_collection(self.collection, schema=schema, index_params=index)

    def _visible(self, extra: str = "") -> str:
        """The filter that makes this version's rows, and only them, visible."""
        parts = [f"fid < {self.visible_below}", *(f"not (fid >= {lo} and fid < {hi})" for lo, hi in self.hidden)]
        if self.dead:
            parts.append(f"not (fid in [{','.join(str(f) for f in sorted(self.dead))}])")
        if extra:
            parts.append(extra)
        return " and ".join(parts)

    # ---- changes ------------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray, tokens: Sequence[list[str]]) -> None:
        super().add(chunks, vectors, tokens)
        for c in chunks:
            self._new_gate.setdefault(c.doc_id, set()).update(gate_runs([c.embedding_text()]))

    @_engine_errors
    def save(self, path: Path, *, keep: int = 2, grace_s: float = 300.0) -> Path:
        """Insert the unsaved chunks (invisible until the new manifest is published), then publish it."""
        path = Path(path)
        self._insert_pending(path)
        gate = dict(self.manifest.backend.get("gate", {}))
        for doc_id, runs in self._new_gate.items():
            gate[doc_id] = "\n".join(sorted(runs | set(gate.get(doc_id, "").split("\n")) - {""}))
        gate = {d: g for d, g in gate.items() if d in self.manifest.files}
        self._new_gate = {}
        self.manifest = _with_backend(self.manifest, visible_below=self.visible_below, rows=self._rows,
                                      gate=gate, hidden=[list(r) for r in self.hidden])
        return super().save(path, keep=keep, grace_s=grace_s)

    @property
    def _rows(self) -> int:
        return int(self.manifest.backend.get("rows", 0))

    def _insert_pending(self, path: Path) -> None:
        """Insert the unsaved chunks into Milvus, invisible to every version until one that counts them is published."""
        if not len(self.pending):
            return
        _remember(path, self.uri, self.collection)  # before anything is written: a crash leaves it findable
        c = self._client(create=True)
        fids, vectors = self.pending.vectors()
        if not self._cleaned:  # rows of a crashed writer: above every version's next_fid, so no version names them
            c.delete(self.collection, filter=f"fid >= {int(fids[0])}")
            self._cleaned = True
        if int(fids[0]) > self.visible_below:  # ids skipped (newer versions' rows, after a rollback): hide them
            self.hidden.append((self.visible_below, int(fids[0])))
        chunks = self.pending.chunks_by_fid(fids.tolist())
        batch: list[dict[str, Any]] = []
        for fid, vec in zip(fids.tolist(), vectors):
            ch = chunks[fid]
            batch.append({"fid": fid, "chunk_id": _safe(ch.id), "doc_id": _safe(ch.doc_id),
                          "text": _safe(ch.embedding_text()), "data": json.dumps(ch.to_dict(), ensure_ascii=True),
                          "dense": vec.tolist()})
            if len(batch) >= _BATCH:
                c.insert(self.collection, batch)
                batch = []
        if batch:
            c.insert(self.collection, batch)
        c.flush(self.collection)
        self.visible_below = int(fids[-1]) + 1
        self.manifest = _with_backend(self.manifest, rows=self._rows + len(fids))
        self.pending.clear()
        self._changed()

    @_engine_errors
    def compact(self, path: Path) -> CompactReport:
        """Remove the earlier versions, then delete from Milvus every row the live version does not see."""
        t = time.perf_counter()
        path = Path(path)
        self.save(path, keep=0, grace_s=0.0)  # earlier versions go first (one a reader holds stays, see above)
        c = self._client()
        dropped = len(self.dead)
        dead = sorted(self.dead)
        for i in range(0, len(dead), _BATCH):
            c.delete(self.collection, ids=dead[i:i + _BATCH])
        for lo, hi in self.hidden:
            c.delete(self.collection, filter=f"fid >= {lo} and fid < {hi}")
        c.delete(self.collection, filter=f"fid >= {self.visible_below}")
        c.flush(self.collection)
        self.dead, self.hidden = set(), []
        self.manifest = _with_backend(self.manifest, rows=self._rows - dropped)
        self._changed()
        self.save(path, keep=0, grace_s=0.0)  # a crash before this: the live version still hides those rows
        return CompactReport(1, 1, dropped, time.perf_counter() - t)

    # ---- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest.backend.get("rows", 0)) - len(self.dead) + len(self.pending)

    @_engine_errors
    def vector_count(self) -> int:
        if not self.visible_below:
            return len(self.pending)
        got = self._client().query(self.collection, filter=self._visible(), output_fields=["count(*)"])
        return int(got[0]["count(*)"]) + len(self.pending)

    @_engine_errors
    def _fids_of(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        out = {c: f for c, f in self.pending.fid_of(list(chunk_ids)).items()}
        rest = [c for c in dict.fromkeys(chunk_ids) if c not in out]
        if not self.visible_below:
            return out
        for i in range(0, len(rest), _BATCH):
            part = {_safe(c): c for c in rest[i:i + _BATCH]}
            found = self._client().query(self.collection,
                                         filter=self._visible(f"chunk_id in {json.dumps(list(part))}"),
                                         output_fields=["fid", "chunk_id"])
            out.update((part[r["chunk_id"]], int(r["fid"])) for r in found if r["chunk_id"] in part)
        return out

    @_engine_errors
    def _fetch(self, fids: Sequence[int]) -> dict[int, Chunk]:
        out = self.pending.chunks_by_fid(list(fids))
        rest = [int(f) for f in fids if f not in out and f < self.visible_below]
        for i in range(0, len(rest), _BATCH):
            for r in self._client().get(self.collection, ids=rest[i:i + _BATCH], output_fields=["fid", "data"]):
                out[int(r["fid"])] = Chunk.from_dict(json.loads(r["data"]))
        return out

    @_engine_errors
    def _iter_chunks(self) -> Iterator[tuple[int, Chunk]]:
        if self.visible_below:
            it = self._client().query_iterator(self.collection, batch_size=_BATCH, filter=self._visible(),
                                               output_fields=["fid", "data"])
            rows = []
            while page := it.next():
                rows.extend((int(r["fid"]), r["data"]) for r in page)
            it.close()
            for fid, data in sorted(rows):
                yield fid, Chunk.from_dict(json.loads(data))
        yield from self.pending.iter_chunks()

    def _iter_ids(self) -> Iterator[tuple[int, str]]:
        for fid, chunk in self._iter_chunks():
            yield fid, chunk.id

    @_engine_errors
    def search_dense(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[Chunk, float]]]:
        q = np.ascontiguousarray(query_vectors, dtype=np.float32)
        k = min(k, _MAX_K)
        found: list[list[tuple[float, int]]] = [[] for _ in range(len(q))]
        if self.visible_below:
            res = self._client().search(self.collection, data=q.tolist(), anns_field="dense", limit=k,
                                        filter=self._visible(), search_params={"metric_type": "IP"},
                                        output_fields=["fid"])
            for row, hits in enumerate(res):
                found[row].extend((float(h["distance"]), int(h["entity"]["fid"])) for h in hits)
        if len(self.pending):  # a writer's unsaved chunks, searched as the local store searches a segment
            scores, fids = self._search_segment(self.pending, q, min(k, len(self.pending)),
                                                self._alive_mask(self.pending))
            for row, (rs, rf) in enumerate(zip(scores, fids)):
                found[row].extend((float(sc), int(f)) for sc, f in zip(rs, rf) if f >= 0)
        return [self._ranked(hits, k) for hits in found]

    @_engine_errors
    def search_bm25(self, query_tokens: list[str], k: int) -> list[tuple[Chunk, float]]:
        """Milvus's full-text search (BM25 over its jieba tokens) on the query's words; unsaved chunks are not
        searched (a reader never has any)."""
        if not query_tokens or not self.visible_below:
            return []
        res = self._client().search(self.collection, data=[" ".join(query_tokens)], anns_field="sparse",
                                    limit=min(k, _MAX_K),
                                    filter=self._visible(), search_params={"metric_type": "BM25"},
                                    output_fields=["fid"])
        top = [(abs(float(h["distance"])), int(h["entity"]["fid"])) for h in res[0]]  # Milvus Lite negates it
        chunks = self._fetch([f for _, f in top])
        return [(chunks[f], s) for s, f in top if f in chunks and s > 0]

    @_engine_errors
    def doc_freq(self, terms: Iterable[str]) -> dict[str, int]:
        out = {}
        for t in dict.fromkeys(terms):
            if not self.visible_below:
                out[t] = 0
                continue
            expr = self._visible(f"TEXT_MATCH(text, {json.dumps(t, ensure_ascii=False)})")
            out[t] = int(self._client().query(self.collection, filter=expr, output_fields=["count(*)"])[0]["count(*)"])
        return out

    def terms_of(self, chunk_ids: Sequence[str], terms: Iterable[str]) -> dict[str, set[str]]:
        from ragbot.store import bm25_tokens

        wanted = set(terms)
        fids = self._fids_of(list(chunk_ids))
        chunks = self._fetch(list(fids.values()))
        return {c: set(bm25_tokens(chunks[f].embedding_text())) & wanted for c, f in fids.items() if f in chunks}

    def gate_text(self) -> str:
        stored = "\n".join(self.manifest.backend.get("gate", {}).values())
        new = "\n".join(r for runs in self._new_gate.values() for r in runs)
        return "\n".join(t for t in (stored, new) if t)


def from_version(version: Path, manifest: Manifest) -> MilvusStore:
    """The hook :mod:`ragbot.store` calls for a version whose manifest names Milvus."""
    return MilvusStore.from_version(version, manifest)


def export(source: IndexStore, store: str, path: Path, batch: int = 10_000, progress: Any = None) -> MilvusStore:
    """Copy an index (its chunks, vectors and file list) into a new Milvus-backed index at ``path``: nothing is
    embedded again. Rows go in ``batch`` at a time; one version is published at the end, so an interrupted
    export leaves no index at ``path`` (run it again) and its rows are dropped by the next export's save."""
    if isinstance(source, MilvusStore):
        raise ConfigError("this index is already in Milvus; to move it to another Milvus, re-ingest there: "
                          "RAGBOT_STORE=... ragbot ingest PATH... --index NEW_FOLDER")
    target = MilvusStore.create(source.manifest.spec, store, path)
    fids, chunks, vectors = [], [], []
    bar = progress(total=len(source), desc="export", unit="chunk") if progress else None

    def flush() -> None:
        if chunks:
            target.add(chunks, np.stack(vectors), [[] for _ in chunks])
            target._insert_pending(path)  # not published until every row and the file list are in
            if bar:
                bar.update(len(chunks))
            fids.clear(), chunks.clear(), vectors.clear()

    for segment in source._all():
        seg_fids, seg_vectors = segment.vectors()
        row = {int(f): i for i, f in enumerate(seg_fids.tolist())}
        for fid, chunk in segment.iter_chunks():
            if fid in source.dead:
                continue
            chunks.append(chunk)
            vectors.append(seg_vectors[row[fid]])
            if len(chunks) >= batch:
                flush()
    flush()
    for record in source.manifest.files.values():  # the gate runs per file came with add()
        target.set_file(record)
    target.save(path, keep=0, grace_s=0.0)
    if bar:
        bar.close()
    return target


def _with_backend(manifest: Manifest, **changes: Any) -> Manifest:
    import dataclasses

    return dataclasses.replace(manifest, backend={**manifest.backend, **changes})


def _owned(path: Path) -> dict[str, list[str]]:
    """The collections this index folder created, by URI (``milvus.json``; unreadable counts as none)."""
    try:
        data = json.loads((Path(path) / "milvus.json").read_text(encoding="utf-8"))
        return {str(u): [str(n) for n in names] for u, names in data.get("collections", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_owned(path: Path, owned: dict[str, list[str]]) -> None:
    tmp = Path(path) / ".milvus.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"collections": owned}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(path) / "milvus.json")


def _remember(path: Path, uri: str, collection: str) -> None:
    """Note a collection this index folder created, so it (and only it) can be dropped once unused."""
    path.mkdir(parents=True, exist_ok=True)
    owned = _owned(path)
    if collection not in owned.get(uri, []):
        owned.setdefault(uri, []).append(collection)
        _write_owned(path, owned)


def _next_fids(path: Path) -> list[int]:
    """The next_fid of every version in the index folder (from uses.json; the manifest for older versions)."""
    out = []
    for v in Path(path).glob("v-*"):
        for name in ("uses.json", "manifest.json"):
            try:
                out.append(int(json.loads((v / name).read_text(encoding="utf-8"))["next_fid"]))
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


def drop_unused_collections(path: Path, named: Sequence[dict[str, Any]]) -> list[str]:
    """Drop the collections this index folder created that no version on disk names (``named``: their backends)."""
    keep = {b.get("collection") for b in named}
    owned = _owned(path)
    dropped = []
    for uri, names in owned.items():
        for name in list(names):
            if name in keep:
                continue
            try:
                c = client(uri)
                if c.has_collection(name):
                    c.drop_collection(name)
            except Exception:  # unreachable now: tried again at a later save
                continue
            names.remove(name)
            dropped.append(name)
    if dropped:
        _write_owned(path, {u: n for u, n in owned.items() if n})
    return dropped
