"""``ragbot ingest``: files → chunks → vectors → FAISS + BM25 + chunk store, incrementally.

A re-run compares each file's sha256 with the manifest: unchanged files are skipped, changed
files have their old chunks replaced, new files are added, and (with ``prune``) files that
vanished from the ingested folders are removed. Bad files are reported and skipped.

Nothing a user types loses what is indexed:

- Inputs are deduplicated by resolved path (a file given twice, or through a symlink, is one file);
  a file whose content equals one already indexed is not indexed again but listed as an alias.
- A rebuild or prune that would drop every indexed file, or more than half of them, is refused with
  :class:`UnsafePublishError` (naming the files and why) unless ``force`` is given; the previous
  versions stay on disk either way (``ragbot index rollback``).
- Any error while loading or chunking one file is reported for that file; the rest go on.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.chunking import Chunker
from ingest.loaders import DocumentLoader, LoadedDocument, LoadError, discover, display_path
from ragbot.embedder import Embedder
from ragbot.errors import IndexCorruptError, IndexMismatchError, UnsafePublishError
from ragbot.segments import AnnParams
from ragbot.store import FileRecord, IndexSpec, IndexStore, bm25_tokens
from ragbot.types import Chunk

if TYPE_CHECKING:
    from ragbot.settings import Settings

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
    duplicates: tuple[tuple[str, str], ...] = ()  # (source, source of the indexed file with the same content)
    notes: tuple[FileFailure, ...] = ()  # loaded, with a caveat (a line cut at a limit, pages skipped, ...)
    encodings: tuple[tuple[str, str], ...] = ()  # (source, detected encoding) of each text file read

    @property
    def ok(self) -> bool:
        """False only when nothing could be ingested: every file failed, or there were no files."""
        return bool(self.added or self.changed or self.unchanged or self.removed or self.duplicates)

    def summary(self, verbose: bool = False) -> str:
        lines = [
            f"Index: {self.index_path}",
            f"Files: {self.files_seen} seen, {len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, {len(self.failed)} failed"
            + (f", {len(self.duplicates)} duplicate" if self.duplicates else ""),
            f"Chunks: +{self.chunks_added} -{self.chunks_removed}, {self.chunks_total} in the index",
            "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ]
        if verbose:
            lines += [f"  encoding {enc}: {src}" for src, enc in self.encodings]
        lines += [f"  DUPLICATE {src}: same content as {same}, indexed once (both names listed)"
                  for src, same in self.duplicates]
        lines += [f"  NOTE {n.path}: {n.reason}" for n in self.notes]
        lines += [f"  FAILED {f.path}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


class IngestPipeline:
    """``IngestPipeline(embedder, chunker).run([Path("corpus")], index_path)`` → :class:`IngestReport`."""

    def __init__(self, embedder: Embedder, chunker: Chunker, loader: DocumentLoader | None = None,
                 progress: ProgressFactory | None = None, *, lock_timeout_s: float = 600.0, keep_versions: int = 2,
                 version_grace_s: float = 300.0, batch_files: int = 200, ann: AnnParams | None = None,
                 store: str = "local") -> None:
        self.embedder = embedder
        self.chunker = chunker
        self.loader = loader or DocumentLoader()
        self.progress = progress or _no_progress
        self.lock_timeout_s, self.keep_versions, self.version_grace_s = lock_timeout_s, keep_versions, version_grace_s
        self.batch_files = batch_files
        self.ann = ann
        self.store = store  # where a new index keeps its data: "local" or a Milvus URI setting (ragbot.milvus)

    @classmethod
    def from_settings(cls, settings: Settings, embedder: Embedder,
                      progress: ProgressFactory | None = None) -> IngestPipeline:
        """The pipeline ``ragbot ingest`` and the web app run: chunking, limits and index options from ``settings``."""
        return cls(embedder, Chunker(settings.chunk_size, settings.chunk_overlap, settings.chunker),
                   DocumentLoader(max_line_chars=settings.max_line_chars, max_pdf_pages=settings.max_pdf_pages,
                                  max_pdf_chars=settings.max_pdf_chars),
                   progress, lock_timeout_s=settings.lock_timeout_s, keep_versions=settings.keep_versions,
                   version_grace_s=settings.version_grace_s, batch_files=settings.ingest_batch_files,
                   ann=AnnParams(ann_min=settings.ann_min_chunks, nprobe=settings.nprobe), store=settings.store)

    def spec(self) -> IndexSpec:
        return IndexSpec(self.embedder.name, self.embedder.dim, self.chunker.spec)

    def run(self, paths: Sequence[Path], index_path: Path, *, prune: bool = False, rebuild: bool = False,
            force: bool = False) -> IngestReport:
        index_path = Path(index_path)
        with IndexStore.writer_lock(index_path, self.lock_timeout_s):
            return self._run([Path(p) for p in paths], index_path, prune=prune, rebuild=rebuild, force=force)

    def _run(self, paths: list[Path], index_path: Path, *, prune: bool, rebuild: bool, force: bool) -> IngestReport:
        seconds: dict[str, float] = Counter()
        t0 = time.perf_counter()
        spec = self.spec()  # loads the embedder: needed anyway to compare with the index
        seconds["model"] = time.perf_counter() - t0

        old = self._open(index_path, spec, rebuild)
        store = old if old is not None and not rebuild else self._empty(spec, index_path)
        if self.ann is not None:
            store.ann = self.ann
        files, errors = discover(paths)
        unique: dict[str, tuple[Path, Path | None]] = {}
        for path, root in files:  # one record per file: the same file twice, or through a symlink, is one
            unique.setdefault(str(path.resolve()), (path, root))
        items = list(unique.items())
        # a plain ingest publishes a version every batch_files files, so an interrupted run loses at most one
        # batch and a re-run skips what was published (unchanged files); a rebuild or prune needs the whole
        # picture before it may publish (it could drop files), so it is one batch
        size = max(1, len(items)) if rebuild or prune else self.batch_files
        batches = [items[i:i + size] for i in range(0, len(items), size)] or [[]]
        bar = self.progress(total=len(items), desc="files", unit="file")
        try:
            made: Counter = Counter()
            parts = [self._run_batch(store, old, dict(batch), errors if i == 0 else [], paths, index_path, bar,
                                     seconds, made, prune=prune, rebuild=rebuild, force=force)
                     for i, batch in enumerate(batches)]
        finally:
            bar.close()  # before an error is printed, not after it
        seconds["total"] = time.perf_counter() - t0

        def joined(name: str) -> tuple:
            return tuple(x for part in parts for x in getattr(part, name))

        return IngestReport(str(index_path), len(unique) + len(errors), joined("added"), joined("changed"),
                            joined("unchanged"), joined("removed"), joined("failed"),
                            sum(p.chunks_added for p in parts), sum(p.chunks_removed for p in parts), len(store),
                            dict(seconds), joined("duplicates"), joined("notes"), joined("encodings"))

    def _run_batch(self, store: IndexStore, old: IndexStore | None, unique: dict[str, tuple[Path, Path | None]],
                   errors: Sequence, paths: list[Path], index_path: Path, bar, seconds: Counter, made: Counter, *,
                   prune: bool, rebuild: bool, force: bool) -> IngestReport:
        """Load, chunk, embed and publish one batch of files (all of them for a rebuild or prune)."""
        t = time.perf_counter()
        failed = [FileFailure(display_path(e.path), e.reason) for e in errors]
        failed_ids: dict[str, str] = {}
        docs: list[LoadedDocument] = []

        def load(doc_id: str, path: Path, root: Path | None, source: str | None = None) -> None:
            try:
                doc = self.loader.run(path, root)
            except LoadError as e:
                failed.append(FileFailure(display_path(e.path), e.reason))
                failed_ids[doc_id] = e.reason
            except Exception as e:  # a custom loader's surprise on one file must never stop the others
                failed.append(FileFailure(display_path(path), f"could not be read ({type(e).__name__}: {e})"))
                failed_ids[doc_id] = str(e)
            else:
                docs.append(doc if source is None else dataclasses.replace(doc, source=source))

        for doc_id, (path, root) in unique.items():
            load(doc_id, path, root)
            bar.update(1)
        plan = _Plan(store, docs)
        if prune:
            roots = [p.resolve() for p in paths if p.is_dir()]
            plan.prune(lambda doc_id: any(Path(doc_id).is_relative_to(r) for r in roots)
                       and doc_id not in unique and not Path(doc_id).exists())
        for doc_id, source in plan.orphans().items():  # aliases whose indexed copy changed or went: index them alone
            load(doc_id, Path(doc_id), None, source)
        to_index: list[tuple[LoadedDocument, list[Chunk]]] = []
        for doc in plan.new_docs(docs):
            try:
                chunks = self.chunker.run(doc)
            except Exception as e:
                failed.append(FileFailure(display_path(doc.doc_id), f"could not be split ({type(e).__name__}: {e})"))
                failed_ids[doc.doc_id] = str(e)
                continue
            if not chunks:
                failed.append(FileFailure(display_path(doc.doc_id), "produced no chunks (no text after splitting)"))
                failed_ids[doc.doc_id] = "no text"
                continue
            to_index.append((doc, chunks))
        duplicates = plan.assign_duplicates(to_index)
        to_index = [(d, c) for d, c in to_index if d.doc_id not in plan.aliased]
        made["chunks"] += sum(len(c) for _, c in to_index)
        if hasattr(bar, "set_postfix_str"):  # tqdm: files with their ETA, and the chunks made so far
            bar.set_postfix_str(f"{made['chunks']} new chunks", refresh=False)
        if old is not None and (rebuild or prune):
            kept = {d.doc_id for d, _ in to_index} | plan.kept_names()
            missing = [display_path(e.path) for e in errors if e.reason == "does not exist"]
            _refuse_unsafe_publish(old, kept, failed_ids, index_path, force, "rebuild" if rebuild else "prune", missing)
        seconds["load+chunk"] += time.perf_counter() - t

        t = time.perf_counter()
        chunks_removed = sum(store.drop_file(doc_id) for doc_id in plan.dropped)
        for doc, _ in to_index:
            chunks_removed += store.drop_file(doc.doc_id)
        new_chunks = [c for _, chunks in to_index for c in chunks]
        tokens = [bm25_tokens(c.embedding_text()) for c in self.progress(new_chunks, desc="tokenise", unit="chunk")]
        seconds["tokenise"] += time.perf_counter() - t

        t = time.perf_counter()
        vectors = self._embed(new_chunks)
        seconds["embed"] += time.perf_counter() - t

        t = time.perf_counter()
        store.add(new_chunks, vectors, tokens)
        now = time.time()
        for doc, chunks in to_index:
            store.set_file(FileRecord(doc.doc_id, doc.source, doc.sha256, sum(len(p.text) for p in doc.pages),
                                      tuple(c.id for c in chunks), now, doc.kind, doc.encoding,
                                      len(doc.pages) + len(doc.skipped_pages) if doc.kind == "pdf" else None,
                                      plan.aliases_of(doc.doc_id)))
        for record in plan.updated_records(store):
            store.set_file(record)
        changed_anything = bool(to_index or plan.dropped or plan.touched)
        if (changed_anything or rebuild) and (len(store) or IndexStore.exists(index_path)):
            store.save(index_path, keep=self.keep_versions, grace_s=self.version_grace_s)
        seconds["index"] += time.perf_counter() - t
        added = [d.source for d, _ in to_index if d.doc_id not in plan.replaced]
        changed = [d.source for d, _ in to_index if d.doc_id in plan.replaced]
        notes = [FileFailure(d.source, n) for d in docs for n in d.notes]
        encodings = [(d.source, d.encoding) for d in docs if d.encoding]
        return IngestReport(str(index_path), 0, tuple(added), tuple(changed), tuple(plan.unchanged),
                            tuple(plan.removed_sources), tuple(failed), len(new_chunks), chunks_removed, len(store),
                            {}, tuple(duplicates), tuple(notes), tuple(encodings))

    def _empty(self, spec: IndexSpec, index_path: Path) -> IndexStore:
        if self.store == "local":
            return IndexStore.empty(spec)
        from ragbot.milvus import MilvusStore

        return MilvusStore.create(spec, self.store, index_path)

    def _open(self, index_path: Path, spec: IndexSpec, rebuild: bool) -> IndexStore | None:
        """The index as it is now (None when there is none); a rebuild may start over a damaged one."""
        if not IndexStore.exists(index_path):
            return None
        try:
            store = IndexStore.load(index_path)
        except (IndexCorruptError, IndexMismatchError):
            if rebuild:
                return None
            raise
        if not rebuild:
            store.check(index_path, spec)
            held = "local" if not store.manifest.backend else "milvus"
            wanted = "local" if self.store == "local" else "milvus"
            if held != wanted:
                raise IndexMismatchError(
                    f"index at {index_path} keeps its data {'locally' if held == 'local' else 'in Milvus'}, and the "
                    f"store setting is {self.store!r}; move it with: ragbot ingest PATH... --index {index_path} --rebuild")
        return store

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
            bar.update(len(texts[i:i + batch]))
        bar.close()
        return np.concatenate(parts)


def _no_progress(iterable=None, **kwargs):
    """A tqdm bar that shows nothing (the library's default: callers that want bars pass a factory)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=True, **kwargs)


def tqdm_progress(iterable=None, **kwargs):
    """A tqdm bar (stderr) for the CLI."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


class _Plan:
    """What one ingest run does to the manifest's records, decided before anything is embedded.

    Records are keyed by their file's path (``doc_id``); a record may also stand for other paths with
    identical content (``aliases``). The plan tracks: unchanged names, records to drop (pruned or
    replaced), aliases to detach, and which new documents are content-duplicates of another.
    """

    def __init__(self, store: IndexStore, docs: Sequence[LoadedDocument]) -> None:
        self.files = dict(store.manifest.files)
        self._unchanged: dict[str, tuple[str, str]] = {}  # doc_id -> (source, doc_id of its record)
        self.replaced: set[str] = set()  # records whose own file changed
        self.dropped: set[str] = set()  # records removed without replacement (pruned)
        self.removed_sources: list[str] = []
        self.detached: dict[str, set[str]] = {}  # record doc_id -> alias doc_ids to remove from it
        self.added_aliases: dict[str, dict[str, str]] = {}  # record doc_id -> new aliases (doc_id -> source)
        self.aliased: set[str] = set()  # new docs that became an alias instead of being indexed
        self.touched = False
        self._orphans: dict[str, str] = {}  # alias doc_id -> source
        self._seen = {d.doc_id for d in docs}
        self._new: set[str] = set()
        # every path the index holds -> its record (built once: one lookup per document, aliases included)
        owners = {name: record for record in self.files.values() for name in record.names()}
        for doc in docs:
            owner = owners.get(doc.doc_id)
            if owner is not None and owner.sha256 == doc.sha256 and (owner.doc_id != doc.doc_id or owner.source == doc.source):
                self._unchanged[doc.doc_id] = (doc.source, owner.doc_id)
                continue
            self._new.add(doc.doc_id)
            if owner is None:
                continue
            if owner.doc_id == doc.doc_id:
                self.replaced.add(doc.doc_id)
                self._orphan_aliases(owner)
            else:
                self._detach(owner.doc_id, doc.doc_id)

    def _detach(self, record_id: str, alias: str) -> None:
        self.detached.setdefault(record_id, set()).add(alias)
        self.touched = True

    def _orphan_aliases(self, record: FileRecord) -> None:
        """The record's content is going: each alias that still exists must be indexed on its own."""
        for alias, source in record.aliases.items():
            if alias not in self._seen and Path(alias).exists():
                self._orphans[alias] = source
                self._seen.add(alias)

    def prune(self, gone: Callable[[str], bool]) -> None:
        for doc_id, record in self.files.items():
            if gone(doc_id) and doc_id not in self._new:
                self.dropped.add(doc_id)
                self.removed_sources.append(record.source)
                self._orphan_aliases(record)
            for alias, source in record.aliases.items():
                if gone(alias):
                    self._detach(doc_id, alias)
                    self.removed_sources.append(source)

    def orphans(self) -> dict[str, str]:
        """Aliases not given in this run whose record goes; given ones are moved from unchanged to new here."""
        going = self.replaced | self.dropped
        for doc_id, (_, owner) in list(self._unchanged.items()):
            if owner in going and owner != doc_id:
                del self._unchanged[doc_id]
                self._new.add(doc_id)
        return dict(self._orphans)

    @property
    def unchanged(self) -> list[str]:
        return [source for source, _ in self._unchanged.values()]

    def new_docs(self, docs: Sequence[LoadedDocument]) -> list[LoadedDocument]:
        return [d for d in docs if d.doc_id in self._new or d.doc_id in self._orphans]

    def assign_duplicates(self, to_index: Sequence[tuple[LoadedDocument, list[Chunk]]]) -> list[tuple[str, str]]:
        """Make each new document whose content is already indexed (or earlier in this run) an alias of it."""
        going = self.replaced | self.dropped
        by_sha = {r.sha256: r for r in self.files.values() if r.doc_id not in going}
        first: dict[str, LoadedDocument] = {}
        out = []
        for doc, _ in to_index:
            target = by_sha.get(doc.sha256)  # never the doc's own record: records being replaced are left out
            target_id, target_source = (target.doc_id, target.source) if target else (None, None)
            if target_id is None and doc.sha256 in first:
                target_id, target_source = first[doc.sha256].doc_id, first[doc.sha256].source
            if target_id is None:
                first[doc.sha256] = doc
                continue
            self.added_aliases.setdefault(target_id, {})[doc.doc_id] = doc.source
            self.aliased.add(doc.doc_id)
            if doc.doc_id in self.replaced:  # its file changed into a copy of another: its old record goes
                self.replaced.discard(doc.doc_id)
                self.dropped.add(doc.doc_id)
            self.touched = True
            out.append((doc.source, target_source))
        return out

    def aliases_of(self, doc_id: str) -> dict[str, str]:
        """Aliases of a record written in this run: those it had (unless detached) plus new ones."""
        old = self.files.get(doc_id)
        if old is None or doc_id in self.replaced:  # new content: its old aliases (other copies of the old) go
            keep = {}
        else:
            keep = {a: s for a, s in old.aliases.items() if a not in self.detached.get(doc_id, set())}
        return {**keep, **self.added_aliases.get(doc_id, {})}

    def updated_records(self, store: IndexStore) -> list[FileRecord]:
        """Records not re-indexed in this run whose alias list changed."""
        ids = (set(self.detached) | set(self.added_aliases)) - self.dropped
        return [dataclasses.replace(store.manifest.files[i], aliases=self.aliases_of(i))
                for i in sorted(ids) if i in store.manifest.files and i not in self.replaced]

    def kept_names(self) -> set[str]:
        """Every path the index will still hold that this run does not (re)index itself."""
        names = set()
        for doc_id, record in self.files.items():
            if doc_id in self.dropped or doc_id in self.replaced:
                continue
            names.add(doc_id)
            names |= set(self.aliases_of(doc_id))
        for aliases in self.added_aliases.values():
            names |= set(aliases)
        return names


def _refuse_unsafe_publish(old: IndexStore, kept: set[str], failed: dict[str, str], index_path: Path,
                           force: bool, what: str, missing_inputs: Sequence[str] = ()) -> None:
    """Refuse a rebuild or prune that would drop every indexed file, or more than half of them."""
    before = old.manifest.sources()
    gone = [(before[n], f"failed to load: {failed[n]}" if n in failed else "not found") for n in before if n not in kept]
    if force or not before or not gone or (len(gone) < len(before) and len(gone) * 2 <= len(before)):
        return
    reasons = Counter("not found" if reason == "not found" else "failed to load" for _, reason in gone)
    why = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
    names = ", ".join(src for src, _ in gone[:3]) + (" ..." if len(gone) > 3 else "")
    shown = ", ".join(missing_inputs[:3]) + (f" and {len(missing_inputs) - 3} more" if len(missing_inputs) > 3 else "")
    given = f"; {shown} {'does' if len(missing_inputs) == 1 else 'do'} not exist" if missing_inputs else ""
    raise UnsafePublishError(
        f"refusing to {what} {index_path}: it would drop {len(gone)} of {len(before)} indexed files ({why}: {names}"
        f"){given}. Check the paths you gave; to drop them anyway, re-run with --force", gone, len(before))
