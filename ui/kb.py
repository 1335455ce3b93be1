"""Knowledge-base tab: upload, ingest, list, delete and re-ingest documents.

Uploads are checked here on the server, whatever the browser widget allowed: the name is reduced
to a safe base name inside ``<RAGBOT_HOME>/uploads/``, the type must be one ragbot reads (and a
PDF must look like one), and the size must be under the limit (``RAGBOT_UI_MAX_UPLOAD_MB``,
default 20). Ingestion, deletion and re-ingestion go through the same code as ``ragbot ingest``
and hold the index's writer lock; variant indexes that already exist (e.g. the ``naive``
variant's) are kept in step.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from ingest.loaders import SUPPORTED_SUFFIXES
from ragbot.errors import RagbotError
from ragbot.settings import Settings
from ragbot.store import IndexStore

DEFAULT_UPLOAD_LIMIT_MB = 20
UPLOAD_LIMIT_ENV = "RAGBOT_UI_MAX_UPLOAD_MB"
MAX_NAME_CHARS = 100
_UNSAFE = re.compile(r"[^\w.\-()（）【】\[\] ]+")  # \w covers CJK; everything else becomes "_"

EmbedderFor = Callable[[Settings], Any]


class UploadError(ValueError):
    """An uploaded file was refused; the message says why (in the UI's language)."""


def upload_limit_bytes(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(UPLOAD_LIMIT_ENV, "")
    try:
        mb = float(raw) if raw else DEFAULT_UPLOAD_LIMIT_MB
    except ValueError:
        mb = DEFAULT_UPLOAD_LIMIT_MB
    return int(max(mb, 0.001) * 1024 * 1024)


def human_size(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KB"


def uploads_dir(settings: Settings) -> Path:
    return settings.home / "uploads"


def sanitize_filename(name: str, allowed: Iterable[str] = SUPPORTED_SUFFIXES) -> str:
    """A safe base name for an uploaded file, or :class:`UploadError`.

    Any directory part is dropped (``../../etc/x.md`` → ``x.md``, also with backslashes), characters
    other than letters, digits, CJK, ``.-_()[]`` and spaces become ``_``, runs of dots collapse
    (no ``..``), leading dots go (no hidden files), and the suffix must be one ragbot reads.
    """
    allowed = {s.lower() for s in allowed}
    text = unicodedata.normalize("NFKC", name or "").replace("\x00", "")
    base = re.split(r"[\\/]", text)[-1].strip()
    base = _UNSAFE.sub("_", base)
    base = re.sub(r"\.{2,}", ".", base).lstrip(". ").rstrip(". ")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        raise UploadError(f"文件名 {name!r} 没有扩展名；支持 {', '.join(sorted(allowed))}")
    suffix = "." + suffix.lower()
    if suffix not in allowed:
        raise UploadError(f"不支持的文件类型 {suffix}；支持 {', '.join(sorted(allowed))}")
    stem = stem.strip(" _") or "upload"
    return stem[:MAX_NAME_CHARS - len(suffix)] + suffix


def validate_upload(name: str, data: bytes, limit: int, allowed: Iterable[str] = SUPPORTED_SUFFIXES) -> str:
    """The safe name for an upload after checking type, size and (for PDFs) content; else :class:`UploadError`."""
    safe = sanitize_filename(name, allowed)
    if len(data) > limit:
        raise UploadError(f"{safe} 有 {human_size(len(data))}，超过上限 {human_size(limit)}")
    if not data.strip():
        raise UploadError(f"{safe} 是空文件")
    if safe.lower().endswith(".pdf") and not data.lstrip()[:5] == b"%PDF-":
        raise UploadError(f"{safe} 的扩展名是 .pdf，但内容不是 PDF")
    return safe


def save_upload(directory: Path, name: str, data: bytes, limit: int,
                allowed: Iterable[str] = SUPPORTED_SUFFIXES) -> Path:
    """Validate and write an upload into ``directory`` (atomically); returns the saved path."""
    safe = validate_upload(name, data, limit, allowed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = (directory / safe).resolve()
    if target.parent != directory.resolve():  # cannot happen after sanitising; kept as the last line of defence
        raise UploadError(f"文件名 {name!r} 指向上传目录之外")
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------- the index's documents


@dataclass(frozen=True)
class DocumentRow:
    doc_id: str
    source: str
    kind: str
    chunks: int
    pages: int | None
    size: int
    ingested_at: float
    uploaded: bool


def list_documents(settings: Settings) -> list[DocumentRow]:
    if not IndexStore.exists(settings.index_path):
        return []
    store = IndexStore.load(settings.index_path)
    up = uploads_dir(settings).resolve()
    rows = [DocumentRow(r.doc_id, r.source, r.kind, len(r.chunk_ids), r.pages, r.size, r.ingested_at,
                        Path(r.doc_id).is_relative_to(up)) for r in store.manifest.files.values()]
    return sorted(rows, key=lambda r: (-round(r.ingested_at), r.source))  # newest first


def documents_frame(rows: Sequence[DocumentRow]) -> Any:
    import pandas as pd

    kinds = {"markdown": "Markdown", "text": "文本", "pdf": "PDF"}
    return pd.DataFrame([{"文件": r.source, "类型": kinds.get(r.kind, r.kind), "分块数": r.chunks,
                          "页数": str(r.pages) if r.pages else "—", "大小 (KB)": round(r.size / 1024, 1),
                          "导入时间": dt.datetime.fromtimestamp(r.ingested_at).strftime("%Y-%m-%d %H:%M"),
                          "来源": "上传" if r.uploaded else "本地目录"} for r in rows],
                        columns=["文件", "类型", "分块数", "页数", "大小 (KB)", "导入时间", "来源"])


def existing_variant_indexes(settings: Settings) -> list[tuple[Settings, Path]]:
    """Variant indexes (other chunking or embedder than the main one) that have been built already."""
    from ragbot.variants import available, variant_index_path

    seen: dict[Path, Settings] = {}
    for variant in available(settings).values():
        vs = variant.settings(settings)
        path = variant_index_path(settings, vs)
        if variant.retrieval and path != settings.index_path and path not in seen and IndexStore.exists(path):
            seen[path] = vs
    return [(vs, path) for path, vs in seen.items()]


def _drop(index_path: Path, doc_ids: Sequence[str]) -> int:
    with IndexStore.writer_lock(index_path):
        store = IndexStore.load(index_path)
        removed = sum(store.drop_file(d) for d in doc_ids)
        store.save(index_path)
    return removed


def delete_documents(settings: Settings, doc_ids: Sequence[str], remove_uploads: bool = True) -> int:
    """Remove documents from FAISS, BM25 and the chunk store at once (one new index version); returns chunks removed.

    Variant indexes drop them too, and an uploaded copy in ``uploads/`` is deleted so that
    "re-ingest all" does not bring it back.
    """
    removed = _drop(settings.index_path, doc_ids)
    for _, path in existing_variant_indexes(settings):
        _drop(path, doc_ids)
    if remove_uploads:
        up = uploads_dir(settings).resolve()
        for d in doc_ids:
            p = Path(d)
            if p.is_relative_to(up) and p.is_file():
                p.unlink()
    return removed


def _ingest(settings: Settings, embedder_for: EmbedderFor, paths: Sequence[Path], index_path: Path,
            progress: Any, rebuild: bool) -> Any:
    from ingest.chunking import Chunker
    from ingest.pipeline import IngestPipeline

    pipeline = IngestPipeline(embedder_for(settings), Chunker(settings.chunk_size, settings.chunk_overlap,
                                                              settings.chunker), progress=progress)
    return pipeline.run(list(paths), index_path, rebuild=rebuild)


def ingest_paths(settings: Settings, paths: Sequence[Path], embedder_for: EmbedderFor, progress: Any = None) -> Any:
    """Ingest files or folders into the main index (and existing variant indexes); returns the main IngestReport."""
    report = _ingest(settings, embedder_for, paths, settings.index_path, progress, rebuild=False)
    for vs, path in existing_variant_indexes(settings):
        _ingest(vs, embedder_for, paths, path, progress, rebuild=False)
    return report


def reingest_all(settings: Settings, embedder_for: EmbedderFor, progress: Any = None) -> Any:
    """Rebuild the main index from the files it lists (files gone from disk are reported and dropped).

    Variant indexes are removed; they are rebuilt from the new main index when a variant needs one.
    """
    variants = existing_variant_indexes(settings)
    files = [Path(r.doc_id) for r in list_documents(settings)]
    report = _ingest(settings, embedder_for, files, settings.index_path, progress, rebuild=True)
    for _, path in variants:
        with IndexStore.writer_lock(path):
            shutil.rmtree(path / (path / "CURRENT").read_text().strip(), ignore_errors=True)
            (path / "CURRENT").unlink(missing_ok=True)
    return report


# ---------------------------------------------------------------- the page


@dataclass
class Outcome:
    """What the last action did, kept in the session so it is still shown after the rerun."""

    kind: str  # success, info, error
    message: str
    failures: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def report_outcome(report: Any, rejected: list[tuple[str, str]] | None = None) -> Outcome:
    parts = []
    for label, items in (("新增", report.added), ("更新", report.changed), ("未变", report.unchanged),
                         ("移除", report.removed)):
        if items:
            parts.append(f"{label} {len(items)} 个")
    failures = [(Path(f.path).name, f.reason) for f in report.failed]
    message = (f"导入完成：{'，'.join(parts) or '没有文件'}；新增 {report.chunks_added} 个分块，"
               f"知识库共 {report.chunks_total} 个分块（{report.seconds.get('total', 0):.1f} 秒）。")
    kind = "success" if report.ok and not failures and not rejected else ("info" if report.ok else "error")
    if not report.ok:
        message = "没有任何文件被导入。" + (" 请查看下面每个文件的原因。" if failures or rejected else "")
    return Outcome(kind, message, failures, list(rejected or []))


def show_outcome(outcome: Outcome | None) -> None:
    from ui.render import md_escape

    if outcome is None:
        return
    {"success": st.success, "info": st.info, "error": st.error}[outcome.kind](outcome.message, icon=None)
    for name, reason in outcome.rejected:
        st.warning(f"已拒绝上传 **{md_escape(name)}**：{md_escape(reason)}", icon="🚫")
    for name, reason in outcome.failures:
        st.error(f"**{md_escape(name)}** 未能导入：{md_escape(reason)}", icon="⚠️")


def run_ingest(settings: Settings, embedder_for: EmbedderFor, paths: Sequence[Path],
               rejected: list[tuple[str, str]] | None = None, *, rebuild_all: bool = False) -> Outcome:
    """Ingest with progress bars drawn where this is called; errors become an :class:`Outcome`, not a crash."""
    from ui.progress import StreamlitProgress
    from ui.resources import clear_pipelines

    with st.status("正在导入文档…" if not rebuild_all else "正在重新导入全部文档…", expanded=True) as status:
        try:
            progress = StreamlitProgress(st.container())
            if rebuild_all:
                report = reingest_all(settings, embedder_for, progress)
            else:
                report = ingest_paths(settings, paths, embedder_for, progress)
        except RagbotError as e:
            status.update(label="导入失败", state="error")
            return Outcome("error", f"导入失败：{e}", [], list(rejected or []))
        finally:
            clear_pipelines()
        status.update(label="导入完成", state="complete", expanded=False)
    return report_outcome(report, rejected)


def render(settings: Settings, embedder_for: EmbedderFor, corpus: Path | None) -> None:
    from ui.render import md_code

    limit = upload_limit_bytes()
    st.subheader("📚 知识库")
    st.caption(f"索引：{md_code(str(settings.index_path))} · 上传的文件保存在 {md_code(str(uploads_dir(settings)))}")
    show_outcome(st.session_state.pop("kb_outcome", None))

    docs = list_documents(settings)
    c1, c2, c3 = st.columns(3)
    c1.metric("文档", len(docs))
    c2.metric("分块", sum(d.chunks for d in docs))
    c3.metric("最近导入", dt.datetime.fromtimestamp(max(d.ingested_at for d in docs)).strftime("%m-%d %H:%M")
              if docs else "—")

    with st.container(border=True):
        st.markdown("**上传文档**")
        gen = st.session_state.get("kb_uploader_gen", 0)
        files = st.file_uploader(
            f"支持 .md / .txt / .pdf，每个文件不超过 {human_size(limit)}；同名文件会被更新",
            type=[s.lstrip(".") for s in SUPPORTED_SUFFIXES], accept_multiple_files=True, key=f"kb_files_{gen}")
        if st.button("导入到知识库", type="primary", disabled=not files, key="kb_ingest", icon="📥"):
            saved, rejected = [], []
            for f in files or []:
                try:
                    saved.append(save_upload(uploads_dir(settings), f.name, f.getvalue(), limit))
                except UploadError as e:
                    rejected.append((f.name, str(e)))
            if saved:
                outcome = run_ingest(settings, embedder_for, saved, rejected)
            else:
                outcome = Outcome("error", "没有可导入的文件。", [], rejected)
            st.session_state["kb_outcome"] = outcome
            st.session_state["kb_uploader_gen"] = gen + 1
            st.rerun()

    if not docs:
        st.info("知识库还是空的：上传文档，或者导入内置的示例语料。", icon="📭")
    if corpus is not None and not any(Path(d.doc_id).is_relative_to(corpus.resolve()) for d in docs):
        if st.button(f"导入内置示例语料（{corpus.name}/）", key="kb_corpus", icon="📦"):
            st.session_state["kb_outcome"] = run_ingest(settings, embedder_for, [corpus])
            st.rerun()
    if not docs:
        return

    st.markdown("**文档列表**")
    st.dataframe(documents_frame(docs), hide_index=True, width="stretch",
                 column_config={"分块数": st.column_config.NumberColumn(format="%d"),
                                "大小 (KB)": st.column_config.NumberColumn(format="%.1f")})

    col_del, col_re = st.columns([3, 1], vertical_alignment="bottom")
    by_id = {d.doc_id: d for d in docs}
    with col_del:
        chosen = st.multiselect("选择要删除的文档", list(by_id), format_func=lambda d: by_id[d].source,
                                key="kb_delete_select", placeholder="选择文档…")
        if st.button("删除所选文档", key="kb_delete", disabled=not chosen, icon="🗑️"):
            try:
                removed = delete_documents(settings, chosen)
                st.session_state["kb_outcome"] = Outcome(
                    "success", f"已删除 {len(chosen)} 个文档（{removed} 个分块），向量索引、BM25 和分块库已同步更新。")
            except RagbotError as e:
                st.session_state["kb_outcome"] = Outcome("error", f"删除失败：{e}")
            from ui.resources import clear_pipelines

            clear_pipelines()
            st.session_state.pop("kb_delete_select", None)
            st.rerun()
    with col_re:
        if st.button("全部重新导入", key="kb_reingest", icon="🔄", width="stretch",
                     help="按当前设置重新读取、切分、向量化所有文档（文件已不存在的会被移除）"):
            st.session_state["kb_outcome"] = run_ingest(settings, embedder_for, [], rebuild_all=True)
            st.rerun()
