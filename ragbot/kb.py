"""The knowledge base as a service: ingest, delete and re-ingest documents, keeping variant indexes in step.

``ragbot ingest`` / ``ragbot index remove`` / ``ragbot index reingest`` and the web app's knowledge-base
tab all call :class:`KnowledgeBase`, so a change made from either keeps every index current:

- the **main index** (``settings.index_path``) is the one ingest writes;
- a **variant index** is a sibling folder for a variant that chunks or embeds differently (the
  ``naive`` variant's fixed 512-character chunks), named by its :meth:`IndexSpec.key
  <ragbot.store.IndexSpec.key>`. Once built (:meth:`KnowledgeBase.ensure_variant_indexes`, by evaluation or
  the app), it gets every later ingest and deletion too; a re-ingest of everything removes it, and
  it is built again from the new main index when a variant needs it.

This module composes :mod:`ingest` (loading, chunking, embedding) with :mod:`ragbot.store`; it is the only
part of the ``ragbot`` package besides the CLI that imports ``ingest``, and ``ingest`` never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragbot.settings import Settings
from ragbot.segments import AnnParams
from ragbot.store import CompactReport, IndexStore

if TYPE_CHECKING:
    from ingest.pipeline import IngestReport
    from ragbot.embedder import Embedder
    from ragbot.variants import Variant

EmbedderFor = Callable[[Settings], "Embedder"]


def uploads_dir(settings: Settings) -> Path:
    """Where the web app stores uploaded files; deleting a document there deletes the uploaded copy too."""
    return settings.home / "uploads"


class KnowledgeBase:
    """``KnowledgeBase(settings).ingest([Path("docs")])`` → the main index's :class:`~ingest.pipeline.IngestReport`.

    ``embedder_for(settings)`` gives the embedder for an index's settings (the app passes its shared
    model cache; by default each embedder is loaded once per :class:`KnowledgeBase`). ``progress`` is a
    tqdm-like factory for the long steps.
    """

    def __init__(self, settings: Settings, embedder_for: EmbedderFor | None = None, progress: Any = None,
                 config_file: Path | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self.config_file = config_file
        self._embedder_for = embedder_for
        self._embedders: dict[tuple[str, str], Embedder] = {}

    def embedder(self, settings: Settings) -> Embedder:
        if self._embedder_for is not None:
            return self._embedder_for(settings)
        from ragbot.embedder import embedder_from_settings, embedder_key

        key = embedder_key(settings)
        if key not in self._embedders:
            self._embedders[key] = embedder_from_settings(settings)
        return self._embedders[key]

    # ---- the indexes ----------------------------------------------------------------------
    def variant_indexes(self) -> list[tuple[Settings, Path]]:
        """Variant indexes (other chunking or embedder than the main index) that have been built already."""
        from ragbot.variants import available, variant_index_path

        seen: dict[Path, Settings] = {}
        for variant in available(self.settings, self.config_file).values():
            vs = variant.settings(self.settings)
            path = variant_index_path(self.settings, vs)
            if variant.retrieval and path != self.settings.index_path and path not in seen and IndexStore.exists(path):
                seen[path] = vs
        return [(vs, path) for path, vs in seen.items()]

    def ensure_variant_indexes(self, variants: Iterable[Variant]) -> list[Path]:
        """Build the indexes that ``variants`` need and that do not exist yet, from the main index's files."""
        from ragbot.variants import variant_index_path

        built: list[Path] = []
        files: list[Path] | None = None
        for variant in variants:
            vs = variant.settings(self.settings)
            path = variant_index_path(self.settings, vs)
            if not variant.retrieval or path == self.settings.index_path or IndexStore.exists(path) or path in built:
                continue
            if files is None:
                files = self.indexed_files()
            self._pipeline(vs).run(files, path)
            built.append(path)
        return built

    def indexed_files(self) -> list[Path]:
        """Every path the main index holds (aliases too: identical copies stay listed)."""
        if not IndexStore.exists(self.settings.index_path):
            return []
        return [Path(name) for name in IndexStore.load(self.settings.index_path).manifest.sources()]

    # ---- changes --------------------------------------------------------------------------
    def ingest(self, paths: Sequence[Path], *, prune: bool = False, rebuild: bool = False,
               force: bool = False) -> IngestReport:
        """Ingest files or folders into the main index, then into every built variant index; the main report.

        ``rebuild`` starts the main index over; variant indexes are then removed (they are rebuilt from
        the new main index when needed). A rebuild or prune that would drop every file or more than
        half of them raises :class:`~ragbot.errors.UnsafePublishError` and changes nothing, unless ``force``.
        """
        paths = [Path(p) for p in paths]
        variants = self.variant_indexes()
        report = self._pipeline(self.settings).run(paths, self.settings.index_path, prune=prune, rebuild=rebuild,
                                                   force=force)
        for vs, path in variants:
            if rebuild:
                self._remove_index(path)
            else:  # the main index accepted this change: the variant follows it (force: same files dropped)
                self._pipeline(vs).run(paths, path, prune=prune, force=True)
        return report

    def reingest_all(self, *, force: bool = False) -> IngestReport:
        """Rebuild the main index from every path it lists (files gone from disk are reported and dropped)."""
        return self.ingest(self.indexed_files(), rebuild=True, force=force)

    def delete(self, doc_ids: Sequence[str], *, remove_uploads: bool = True) -> int:
        """Remove documents from every index (FAISS, BM25 and chunk store at once: one new version each);
        returns the chunks removed from the main index.

        With ``remove_uploads``, an uploaded copy under :func:`uploads_dir` is deleted too, so that a
        re-ingest of everything does not bring it back. Files elsewhere on disk are never touched.
        """
        removed = self._drop(self.settings.index_path, doc_ids)
        for _, path in self.variant_indexes():
            self._drop(path, doc_ids)
        if remove_uploads:
            up = uploads_dir(self.settings).resolve()
            for d in doc_ids:
                p = Path(d)
                if p.is_relative_to(up) and p.is_file():
                    p.unlink()
        return removed

    def compact(self) -> list[tuple[Path, CompactReport]]:
        """Compact the main index and every built variant index (:meth:`IndexStore.compact`), each under its lock."""
        out = []
        for path in [self.settings.index_path, *(p for _, p in self.variant_indexes())]:
            with IndexStore.writer_lock(path, self.settings.lock_timeout_s):
                store = IndexStore.load(path)
                store.ann = AnnParams(ann_min=self.settings.ann_min_chunks, nprobe=self.settings.nprobe)
                report = store.compact(path)
                store.save(path, keep=self.settings.keep_versions, grace_s=self.settings.version_grace_s)
            out.append((path, report))
        return out

    # ---- helpers --------------------------------------------------------------------------
    def _pipeline(self, settings: Settings):
        from ingest.pipeline import IngestPipeline

        return IngestPipeline.from_settings(settings, self.embedder(settings), self.progress)

    def _drop(self, index_path: Path, doc_ids: Sequence[str]) -> int:
        with IndexStore.writer_lock(index_path, self.settings.lock_timeout_s):
            store = IndexStore.load(index_path)
            removed = sum(store.drop_file(d) for d in doc_ids)
            store.save(index_path, keep=self.settings.keep_versions, grace_s=self.settings.version_grace_s)
        return removed

    def _remove_index(self, path: Path) -> None:
        with IndexStore.writer_lock(path, self.settings.lock_timeout_s):
            IndexStore.delete(path)
