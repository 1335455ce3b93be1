"""Knowledge-base tab: upload, ingest, list, delete and re-ingest documents.

Uploads are checked here on the server, whatever the browser widget allowed: the name is reduced
to a safe base name inside ``<RAGBOT_HOME>/uploads/``, the type must be one ragbot reads (and a
PDF must look like one), the size must be under the limit (``RAGBOT_UI_MAX_UPLOAD_MB``, default
20) and one batch holds at most ``RAGBOT_UI_MAX_UPLOAD_FILES`` files (default 50). Two files of one
batch whose names reduce to the same safe name are both kept (``x.md``, ``x (2).md``).

Ingestion, deletion and re-ingestion are :class:`ragbot.kb.KnowledgeBase` calls, the same as
``ragbot ingest`` / ``ragbot index remove|reingest``: they hold the index's writer lock and keep
variant indexes that already exist (e.g. the ``naive`` variant's) in step. They run as a background job (:mod:`ui.jobs`), so that a click during a long ingest cannot
stop it half-way: every rerun shows the running job's progress and, when it ends, its outcome. A
re-ingest that would drop every file or more than half of them is not published until the user
confirms it (:class:`~ragbot.errors.UnsafePublishError`, then ``force``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import streamlit as st

from ingest.loaders import SUPPORTED_SUFFIXES
from ragbot.errors import RagbotError, UnsafePublishError
from ragbot.kb import uploads_dir
from ragbot.settings import Settings
from ragbot.store import IndexStore

DEFAULT_UPLOAD_LIMIT_MB = 20
UPLOAD_LIMIT_ENV = "RAGBOT_UI_MAX_UPLOAD_MB"
DEFAULT_MAX_FILES = 50
MAX_FILES_ENV = "RAGBOT_UI_MAX_UPLOAD_FILES"
MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200  # ext4 allows 255 bytes per name, a CJK character takes 3: 100 of them would not fit
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


def max_upload_files(env: Mapping[str, str] | None = None) -> int:
    """How many files one upload batch may hold (``RAGBOT_UI_MAX_UPLOAD_FILES``, default 50, at least 1)."""
    env = os.environ if env is None else env
    try:
        return max(int(env.get(MAX_FILES_ENV, "") or DEFAULT_MAX_FILES), 1)
    except ValueError:
        return DEFAULT_MAX_FILES


def human_size(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KB"


def _fit(stem: str, suffix: str) -> str:
    """``stem + suffix`` with ``stem`` cut to fit MAX_NAME_CHARS characters and MAX_NAME_BYTES bytes of UTF-8."""
    stem = stem[:max(MAX_NAME_CHARS - len(suffix), 1)]
    while len(stem) > 1 and len((stem + suffix).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + suffix


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
    return _fit(stem.strip(" _") or "upload", suffix)


def unique_name(safe: str, taken: set[str]) -> str:
    """``safe``, else ``stem (2).suffix``, ``stem (3).suffix``…: the first whose case-folded form is not in ``taken``.

    Case-folded because macOS and Windows file systems (a Docker volume, a synced folder) treat
    ``X.md`` and ``x.md`` as one file.
    """
    stem, suffix = os.path.splitext(safe)
    name, n = safe, 1
    while name.casefold() in taken:
        n += 1
        name = _fit(stem, f" ({n}){suffix}")
    return name


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


def _write(directory: Path, safe: str, data: bytes, name: str) -> Path:
    """Write ``data`` as ``directory/safe`` atomically (a crash leaves the old file or the new one, never half)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = (directory / safe).resolve()
    if target.parent != directory.resolve():  # cannot happen after sanitising; kept as the last line of defence
        raise UploadError(f"文件名 {name!r} 指向上传目录之外")
    # a temporary file of its own for every write: two sessions uploading the same name at once must not
    # write into one shared ".part" file and publish a mix of both
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_upload(directory: Path, name: str, data: bytes, limit: int,
                allowed: Iterable[str] = SUPPORTED_SUFFIXES) -> Path:
    """Validate and write an upload into ``directory`` (atomically); returns the saved path."""
    return _write(directory, validate_upload(name, data, limit, allowed), data, name)


def save_uploads(directory: Path, files: Sequence[tuple[str, bytes]], limit: int, max_files: int = DEFAULT_MAX_FILES,
                 allowed: Iterable[str] = SUPPORTED_SUFFIXES) -> tuple[list[Path], list[tuple[str, str]]]:
    """Validate and write one upload batch: the saved paths, and ``(name, reason)`` for every file refused.

    Within the batch, names that reduce to the same safe name (``a/x.md`` and ``b\\x.md``, ``x?.md``
    and ``x*.md``) are stored as ``x.md``, ``x (2).md``… rather than the later one overwriting the
    earlier; a name uploaded again in a later batch replaces its file, as the uploader says. Files
    after the first ``max_files`` are refused.
    """
    saved: list[Path] = []
    rejected: list[tuple[str, str]] = []
    taken: set[str] = set()
    for i, (name, data) in enumerate(files):
        if i >= max_files:
            rejected.append((name, f"一次最多上传 {max_files} 个文件，这个文件没有保存；请分批上传"))
            continue
        try:
            safe = unique_name(validate_upload(name, data, limit, allowed), taken)
            saved.append(_write(directory, safe, data, name))
            taken.add(safe.casefold())
        except UploadError as e:
            rejected.append((name, str(e)))
        except OSError as e:  # disk full, permissions: this file is refused, the others still go in
            rejected.append((name, f"无法保存：{e}"))
    return saved, rejected


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
    aliases: tuple[str, ...] = ()  # names of other files with identical content (indexed once)


def list_documents(settings: Settings, store: IndexStore | None = None) -> list[DocumentRow]:
    """The main index's documents, newest first; ``store`` is the index already open (else it is read)."""
    if store is None:
        if not IndexStore.exists(settings.index_path):
            return []
        store = IndexStore.load(settings.index_path)
    up = uploads_dir(settings).resolve()
    rows = [DocumentRow(r.doc_id, r.source, r.kind, len(r.chunk_ids), r.pages, r.size, r.ingested_at,
                        Path(r.doc_id).is_relative_to(up), tuple(r.aliases.values()))
            for r in store.manifest.files.values()]
    return sorted(rows, key=lambda r: (-round(r.ingested_at), r.source))  # newest first


def documents_frame(rows: Sequence[DocumentRow]) -> Any:
    import pandas as pd

    kinds = {"markdown": "Markdown", "text": "文本", "pdf": "PDF"}
    return pd.DataFrame([{"文件": r.source + "".join(f"\n= {a}" for a in r.aliases), "类型": kinds.get(r.kind, r.kind), "分块数": r.chunks,
                          "页数": str(r.pages) if r.pages else "—", "大小 (KB)": round(r.size / 1024, 1),
                          "导入时间": dt.datetime.fromtimestamp(r.ingested_at).strftime("%Y-%m-%d %H:%M"),
                          "来源": "上传" if r.uploaded else "本地目录"} for r in rows],
                        columns=["文件", "类型", "分块数", "页数", "大小 (KB)", "导入时间", "来源"])


# ---------------------------------------------------------------- jobs: what the worker thread runs


ACTIONS = {"ingest": "导入文档", "reingest": "重新导入全部文档", "delete": "删除文档", "compact": "压缩索引"}


@dataclass(frozen=True)
class Request:
    """One knowledge-base job; kept with a refused publish, to run again with ``force`` once confirmed."""

    action: str  # a key of ACTIONS
    paths: tuple[Path, ...] = ()
    doc_ids: tuple[str, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()  # uploads refused before the job started, reported with its outcome
    force: bool = False

    @property
    def label(self) -> str:
        return ACTIONS[self.action]


@dataclass
class Outcome:
    """What the last action did, kept in the session so it is still shown after the rerun.

    ``kind`` "confirm": a publish was refused (``dropped`` would go, of ``total``); ``request`` runs
    again with ``force`` when the user confirms.
    """

    kind: str  # success, info, error, confirm
    message: str
    failures: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    request: Request | None = None


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


def perform(settings: Settings, embedder_for: EmbedderFor, request: Request, progress: Any = None) -> Outcome:
    """Carry out ``request`` and say what it did. Runs in the worker thread: nothing here may call ``st.*``."""
    from ragbot.kb import KnowledgeBase

    rejected = list(request.rejected)
    kb = KnowledgeBase(settings, embedder_for, progress)
    try:
        if request.action == "delete":
            removed = kb.delete(request.doc_ids)
            return Outcome("success", f"已删除 {len(request.doc_ids)} 个文档（{removed} 个分块），"
                                      "向量索引、BM25 和分块库已同步更新。")
        if request.action == "compact":
            done = kb.compact()
            dropped = sum(r.removed_rows_dropped for _, r in done)
            main = done[0][1]
            return Outcome("success", f"索引已压缩：{dropped} 个已删除的分块从磁盘移除，分段 {main.segments_before} → "
                                      f"{main.segments_after}（{sum(r.seconds for _, r in done):.1f} 秒）。")
        if request.action == "reingest":
            report = kb.reingest_all(force=request.force)
        else:
            report = kb.ingest(request.paths)
    except UnsafePublishError as e:
        return Outcome("confirm", str(e), rejected=rejected, dropped=list(e.dropped), total=e.total, request=request)
    except RagbotError as e:
        return Outcome("error", f"{request.label}失败：{e}", [], rejected)
    return report_outcome(report, rejected)


def job_key(settings: Settings) -> str:
    """Jobs are one at a time per main index (variant indexes follow the main one inside the same job)."""
    return str(Path(settings.index_path).resolve())


def job_outcome(job: Any) -> Outcome:
    """The outcome of a finished job: what :func:`perform` returned, or the error that escaped it."""
    if isinstance(job.result, Outcome):
        return job.result
    return Outcome("error", f"{job.label}失败：{type(job.error).__name__}: {job.error}")


# ---------------------------------------------------------------- the page


def show_outcome(outcome: Outcome | None) -> None:
    from ui.render import md_escape

    if outcome is None or outcome.kind == "confirm":
        return
    {"success": st.success, "info": st.info, "error": st.error}[outcome.kind](md_escape(outcome.message), icon=None)
    for name, reason in outcome.rejected:
        st.warning(f"已拒绝上传 **{md_escape(name)}**：{md_escape(reason)}", icon="🚫")
    for name, reason in outcome.failures:
        st.error(f"**{md_escape(name)}** 未能导入：{md_escape(reason)}", icon="⚠️")


class JobView:
    """This script run's view of the knowledge-base job on ``settings``' main index.

    Made once per run, before anything is drawn: a job that has ended since this session last saw
    it running becomes the session's ``kb_outcome`` (or ``kb_confirm``). :meth:`slot` marks a place
    where a running job's progress is drawn (the setup panel and the knowledge-base tab both show
    it); :meth:`follow`, called once everything else is drawn, redraws those places until the job
    ends and then reruns the page. A click meanwhile stops only this run, never the job: the next
    run finds the job still going and follows it again.
    """

    POLL_S = 0.3

    def __init__(self, settings: Settings, embedder_for: EmbedderFor) -> None:
        from ui.resources import clear_pipelines, get_jobs

        self.settings, self.embedder_for, self.registry = settings, embedder_for, get_jobs()
        self.job = self.registry.get(job_key(settings))
        self._slots: list[Any] = []
        if self.job is not None and not self.job.done:
            st.session_state["kb_job"] = self.job.id  # this session shows the outcome when the job ends
        elif self.job is not None and st.session_state.get("kb_job") == self.job.id:
            del st.session_state["kb_job"]
            outcome = job_outcome(self.job)
            st.session_state["kb_confirm" if outcome.kind == "confirm" else "kb_outcome"] = outcome
            clear_pipelines()  # new index version: free the old pipelines and store
        self.followed = self.running  # even if it ends before follow(): then the rerun shows its outcome

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    def start(self, request: Request) -> None:
        """Start ``request`` in the worker, then rerun (the next run draws its progress); does not return.

        A job already running on the index (another session's) is reported instead.
        """
        from ui.jobs import JobBusyError

        try:
            job = self.registry.start(job_key(self.settings), request.label,
                                      lambda progress: perform(self.settings, self.embedder_for, request, progress))
            st.session_state["kb_job"] = job.id
        except JobBusyError as e:
            st.session_state["kb_outcome"] = Outcome("error", str(e), [], list(request.rejected))
        st.rerun()

    def slot(self) -> None:
        if self.running:
            self._slots.append(st.empty())
            self._draw()

    def follow(self) -> None:
        """Wait for the job this run showed, redrawing its progress; then rerun to show its outcome."""
        if not self.followed:
            return
        while not self.job.wait(self.POLL_S):
            self._draw()  # where a click stops this run: Streamlit raises at the next st.* call
        st.rerun()

    def _draw(self) -> None:
        from ui.progress import draw_bars

        job = self.job
        for slot in self._slots:
            with slot.container(border=True):
                st.markdown(f"**⏳ 正在{job.label}…**（已 {job.elapsed():.0f} 秒）")
                st.caption("在后台进行：切换页面、提问或刷新都不会打断它；完成后这里会显示结果。")
                draw_bars(job.progress.bars())


REASONS = {"not found": "文件已不存在", "failed to load": "无法读取"}


def dropped_frame(dropped: Sequence[tuple[str, str]]) -> Any:
    import pandas as pd

    def why(reason: str) -> str:
        head, _, detail = reason.partition(": ")
        return REASONS.get(head, head) + (f"：{detail}" if detail else "")

    return pd.DataFrame([{"文件": source, "原因": why(reason)} for source, reason in dropped], columns=["文件", "原因"])


def confirm_panel(view: JobView) -> None:
    """A publish that would empty the index (or drop most of it) waits here for a yes or a no."""
    from ui.render import md_escape

    pending: Outcome | None = st.session_state.get("kb_confirm")
    if pending is None or pending.request is None:
        return
    with st.container(border=True):
        st.warning(f"**{pending.request.label}没有执行**：这样会从知识库移除 {len(pending.dropped)} / {pending.total} "
                   "个文件（全部或超过一半），它们列在下面，知识库目前保持原样。确认这些文件确实不要了，再点“确认并继续”。",
                   icon="⚠️")
        st.dataframe(dropped_frame(pending.dropped), hide_index=True, width="stretch")
        st.caption(md_escape(pending.message))
        c1, c2, _ = st.columns([1, 1, 3])
        if c1.button("确认并继续", key="kb_force", type="primary", icon="✅", disabled=view.running, width="stretch"):
            del st.session_state["kb_confirm"]
            view.start(replace(pending.request, force=True))
        if c2.button("取消", key="kb_force_cancel", width="stretch"):
            del st.session_state["kb_confirm"]
            st.session_state["kb_outcome"] = Outcome("info", f"已取消{pending.request.label}，知识库没有变化。",
                                                     rejected=pending.rejected)
            st.rerun()


def render(settings: Settings, embedder_for: EmbedderFor, corpus: Path | None, view: JobView | None = None) -> None:
    """The tab. ``view`` is the run's :class:`JobView` when the app made one (it follows the job after every tab
    is drawn); without one the tab makes its own and follows the job at its end."""
    from ui.render import md_code, md_escape
    from ui.resources import get_store

    own = view is None
    view = view or JobView(settings, embedder_for)
    limit, max_files = upload_limit_bytes(), max_upload_files()
    st.subheader("📚 知识库")
    st.caption(f"索引：{md_code(str(settings.index_path))} · 上传的文件保存在 {md_code(str(uploads_dir(settings)))}")
    show_outcome(st.session_state.pop("kb_outcome", None))
    confirm_panel(view)
    view.slot()
    busy = view.running

    store = None
    try:
        store = get_store(settings.index_path) if IndexStore.exists(settings.index_path) else None
        docs = list_documents(settings, store) if store is not None else []
    except RagbotError as e:
        st.error(f"知识库无法打开：{md_escape(str(e))}", icon="⚠️")
        docs = []
    c1, c2, c3 = st.columns(3)
    c1.metric("文档", len(docs))
    c2.metric("分块", sum(d.chunks for d in docs))
    c3.metric("最近导入", dt.datetime.fromtimestamp(max(d.ingested_at for d in docs)).strftime("%m-%d %H:%M")
              if docs else "—")

    with st.container(border=True):
        st.markdown("**上传文档**")
        gen = st.session_state.get("kb_uploader_gen", 0)
        files = st.file_uploader(
            f"支持 .md / .txt / .pdf，每个文件不超过 {human_size(limit)}，每次最多 {max_files} 个；同名文件会被更新",
            type=[s.lstrip(".") for s in SUPPORTED_SUFFIXES], accept_multiple_files=True, key=f"kb_files_{gen}")
        if st.button("导入到知识库", type="primary", disabled=not files or busy, key="kb_ingest", icon="📥"):
            saved, rejected = save_uploads(uploads_dir(settings), [(f.name, f.getvalue()) for f in files or []],
                                           limit, max_files)
            st.session_state["kb_uploader_gen"] = gen + 1
            if saved:
                view.start(Request("ingest", tuple(saved), rejected=tuple(rejected)))
            else:
                st.session_state["kb_outcome"] = Outcome("error", "没有可导入的文件。", [], rejected)
                st.rerun()

    if not docs and not busy:
        st.info("知识库还是空的：上传文档，或者导入内置的示例语料。", icon="📭")
    if corpus is not None and not any(Path(d.doc_id).is_relative_to(corpus.resolve()) for d in docs):
        if st.button(f"导入内置示例语料（{corpus.name}/）", key="kb_corpus", icon="📦", disabled=busy):
            view.start(Request("ingest", (corpus,)))
    if docs:
        st.markdown("**文档列表**")
        st.dataframe(documents_frame(docs), hide_index=True, width="stretch",
                     column_config={"分块数": st.column_config.NumberColumn(format="%d"),
                                    "大小 (KB)": st.column_config.NumberColumn(format="%.1f")})

        if store is not None:
            where = "Milvus" if store.manifest.backend else f"{len(store.segments)} 个分段"
            st.caption(f"索引存储：{where}；{len(store.dead)} 个已删除的分块等待压缩（压缩后从磁盘移除）。")
        col_del, col_re, col_compact = st.columns([3, 1, 1], vertical_alignment="bottom")
        by_id = {d.doc_id: d for d in docs}
        with col_del:
            chosen = st.multiselect("选择要删除的文档", list(by_id), format_func=lambda d: by_id[d].source,
                                    key="kb_delete_select", placeholder="选择文档…")
            if st.button("删除所选文档", key="kb_delete", disabled=not chosen or busy, icon="🗑️"):
                st.session_state.pop("kb_delete_select", None)
                view.start(Request("delete", doc_ids=tuple(chosen)))
        with col_re:
            if st.button("全部重新导入", key="kb_reingest", icon="🔄", width="stretch", disabled=busy,
                         help="按当前设置重新读取、切分、向量化所有文档（文件已不存在的会被移除）"):
                view.start(Request("reingest"))
        with col_compact:
            if st.button("压缩索引", key="kb_compact", icon="🗜️", width="stretch", disabled=busy,
                         help="删除的分块先记为墓碑，压缩后才从磁盘移除，所有分段合并为一个（超过 ann_min_chunks 的分段使用近似向量索引）"):
                view.start(Request("compact"))
    if own:
        view.follow()
