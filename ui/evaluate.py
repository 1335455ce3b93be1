"""ROUGE tab: run an evaluation on a Q&A set, compare variants, inspect single questions, reopen past runs.

The run is :func:`ragbot.evaluation.runner.evaluate`, the function ``ragbot eval`` calls, with the app's shared
models; its outputs (``records.jsonl``, ``summary.json``, charts) and the history entry are the same, so a
run started here shows up in ``ragbot eval --history`` and the other way round. Metric names and labels
come from :mod:`ragbot.evaluation.summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from ragbot.errors import ConfigError, RagbotError
from ragbot.evaluation.runner import EvalRun, Record, evaluate, load_run
from ragbot.evaluation.summary import CHART_GROUPS, HISTORY_UI, TABLE, metric
from ragbot.settings import Settings
from ragbot.variants import Variant
SORTS = {"ROUGE-L 从低到高": ("ROUGE-L", True), "ROUGE-L 从高到低": ("ROUGE-L", False),
         "用时从长到短": ("用时 (秒)", False), "题号": ("编号", True)}
TYPE_LABELS = {"unanswerable": "不可答", "definition": "定义", "comparison": "比较", "how": "方法", "list": "列举",
               "formula": "公式", "code": "代码", "multi_hop": "多跳", "numeric": "数值"}


def bundled_qa(corpus: Path | None) -> Path | None:
    path = corpus / "qa.jsonl" if corpus is not None else None
    return path if path is not None and path.is_file() else None


def save_qa_upload(settings: Settings, name: str, data: bytes, limit: int) -> Path:
    """Store an uploaded evaluation set under ``<home>/uploads/eval/`` after checking it parses as Q&A JSONL."""
    from ragbot.evaluation.runner import load_qa
    from ui.kb import UploadError, save_upload

    path = save_upload(settings.home / "uploads" / "eval", name, data, limit, allowed={".jsonl"})
    try:
        load_qa(path)
    except (ConfigError, UnicodeDecodeError) as e:
        path.unlink(missing_ok=True)
        raise UploadError(f"不是有效的问答 JSONL：{e}") from None
    return path


def run_evaluation(settings: Settings, variants: Sequence[Variant], items: Sequence[Any], qa_label: str,
                   models: Any, progress: Any = None) -> EvalRun:
    """:func:`ragbot.evaluation.runner.evaluate` with the app's shared models (recorded as a web-app run)."""
    return evaluate(settings, variants, items, qa_file=qa_label, models=models, progress=progress, source="ui")


# ---------------------------------------------------------------- tables


def label(key: str) -> str:
    return metric(key).label


def comparison_frame(summaries: Mapping[str, Mapping[str, Any]]) -> Any:
    """Metrics (rows, in the CLI table's order) by variant (columns); metrics nobody has are left out."""
    import pandas as pd

    rows = {}
    for key in TABLE:
        values = [summaries[v].get(key) for v in summaries]
        if any(x is not None for x in values):
            rows[label(key)] = values
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(summaries)).astype(float)


def best_cells(frame: Any) -> Any:
    """A Styler marking the best variant of each metric (higher or lower is better, as in the CLI table)."""
    higher = {label(k): metric(k).higher for k in TABLE}

    def mark(row: Any) -> list[str]:
        present = row.dropna()
        if len(row) < 2 or present.nunique() < 2:
            return [""] * len(row)
        best = present.max() if higher.get(row.name, True) else present.min()
        return ["background-color: rgba(34,197,94,.25); font-weight: 600" if v == best else "" for v in row]

    counts = [label(k) for k in TABLE if metric(k).count and label(k) in frame.index]

    def fmt(v: float) -> str:
        return "—" if v != v else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3f}")

    styler = frame.style.apply(mark, axis=1).format(fmt)
    return styler.format("{:.0f}", subset=(counts, list(frame.columns)), na_rep="—") if counts else styler


def chart_frame(summaries: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> Any:
    """Variants (rows) by metrics (columns) for a grouped bar chart."""
    import pandas as pd

    cols = [m for m in metrics if any(summaries[v].get(m) is not None for v in summaries)]
    return pd.DataFrame([[summaries[v].get(m) for m in cols] for v in summaries], index=list(summaries),
                        columns=[label(m) for m in cols]).astype(float)


SUPPORTED = metric("supported_sentences").label  # per question: that answer's share (empty for a refusal)


def questions_frame(records: Sequence[Record]) -> Any:
    import pandas as pd

    rows = []
    for r in records:
        rows.append({"方案": r.variant, "编号": r.id, "问题": r.question, "类型": TYPE_LABELS.get(r.type, r.type),
                     "ROUGE-L": r.rouge.get("rougeL_char"), "ROUGE-1": r.rouge.get("rouge1_char"),
                     "ROUGE-2": r.rouge.get("rouge2_char"), SUPPORTED: r.supported_sentences, "拒答": r.refused,
                     "证据排名": r.evidence_rank, "用时 (秒)": round(r.timings_ms.get("total_ms", 0) / 1000, 2),
                     "出错": bool(r.error)})
    return pd.DataFrame(rows, columns=["方案", "编号", "问题", "类型", "ROUGE-L", "ROUGE-1", "ROUGE-2", SUPPORTED,
                                       "拒答", "证据排名", "用时 (秒)", "出错"])


def filter_questions(frame: Any, *, variants: Sequence[str] = (), types: Sequence[str] = (), text: str = "",
                     only_refused: bool = False, sort: str = "ROUGE-L 从低到高") -> Any:
    out = frame
    if variants:
        out = out[out["方案"].isin(list(variants))]
    if types:
        out = out[out["类型"].isin(list(types))]
    if text:
        out = out[out["问题"].str.contains(text, regex=False) | out["编号"].astype(str).str.contains(text, regex=False)]
    if only_refused:
        out = out[out["拒答"]]
    column, ascending = SORTS.get(sort, SORTS["ROUGE-L 从低到高"])
    return out.sort_values(column, ascending=ascending, kind="stable", na_position="first")


def past_runs(history_path: Path, limit: int = 200) -> list[dict[str, Any]]:
    """Runs from the SQLite history, newest first, one entry per run with its variants."""
    from ragbot.evaluation.report import History

    if not Path(history_path).exists():
        return []
    runs: dict[str, dict[str, Any]] = {}
    for row in History(history_path).runs(limit):
        run = runs.setdefault(row["run_id"], {"run_id": row["run_id"], "created_at": row["created_at"],
                                              "qa_file": row["qa_file"], "questions": row["questions"],
                                              "out_dir": row["out_dir"], "commit": row["git_commit"],
                                              "variants": {}})
        run["variants"][row["variant"]] = row["metrics"]
    return list(runs.values())


def runs_frame(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = HISTORY_UI) -> Any:
    import pandas as pd

    rows = []
    for run in runs:
        for variant, m in run["variants"].items():
            rows.append({"运行": run["run_id"], "时间": run["created_at"].replace("T", " ")[:19],
                         "评测集": Path(run["qa_file"]).name, "题数": run["questions"], "方案": variant,
                         **{label(k): m.get(k) for k in metrics}})
    frame = pd.DataFrame(rows)
    metric_columns = [label(k) for k in metrics]
    if not frame.empty:
        frame[metric_columns] = frame[metric_columns].astype(float)  # None → NaN: shown as an empty cell
    return frame


# ---------------------------------------------------------------- the tab


def _run_label(run: dict[str, Any]) -> str:
    when = run["created_at"].replace("T", " ")[:16]
    return f"{run['run_id']} · {when} · {Path(run['qa_file']).name} · {', '.join(run['variants'])} · {run['questions']} 题"


def render_results(run: EvalRun) -> None:
    from ui.render import md_code, md_escape

    st.markdown(f"#### 结果：{md_escape(run.run_id)}")
    st.caption(f"评测集 {md_escape(Path(str(run.meta.get('qa_file', ''))).name)} · {run.meta.get('questions', '?')} 题 · "
               f"输出目录 {md_code(str(run.out_dir))}")
    st.markdown("**对比表**（绿色为每项指标最好的方案）")
    table = comparison_frame(run.summaries)
    st.dataframe(best_cells(table), width="stretch", height=min(36 * (len(table) + 1) + 3, 900))

    st.markdown("**各项指标**")
    chart_tabs = st.tabs(list(CHART_GROUPS))
    for tab, (group, metrics) in zip(chart_tabs, CHART_GROUPS.items()):
        with tab:
            frame = chart_frame(run.summaries, metrics)
            if frame.empty or frame.isna().all().all():
                st.caption("这次运行没有这组指标。")
            else:
                st.bar_chart(frame.T, stack=False, horizontal=True, height=60 + 28 * frame.size)

    st.markdown("**逐题结果**")
    frame = questions_frame(run.records)
    f1, f2, f3, f4 = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
    variants = f1.multiselect("方案", sorted(frame["方案"].unique()), key="ev_filter_variants", placeholder="全部")
    types = f2.multiselect("题型", sorted(frame["类型"].unique()), key="ev_filter_types", placeholder="全部")
    sort = f3.selectbox("排序", list(SORTS), key="ev_sort")
    only_refused = f4.toggle("只看拒答", key="ev_only_refused")
    text = st.text_input("搜索问题或编号", key="ev_search", placeholder="输入关键词…")
    shown = filter_questions(frame, variants=variants, types=types, text=text, only_refused=only_refused, sort=sort)
    st.dataframe(shown, hide_index=True, width="stretch", key="ev_questions",
                 column_config={"ROUGE-L": st.column_config.ProgressColumn(format="%.3f", min_value=0, max_value=1),
                                "ROUGE-1": st.column_config.NumberColumn(format="%.3f"),
                                "ROUGE-2": st.column_config.NumberColumn(format="%.3f"),
                                SUPPORTED: st.column_config.NumberColumn(format="%.2f")})
    st.caption(f"共 {len(shown)} 行。展开下面的题目对照参考答案和生成的回答（按上面的排序，最多 20 题）。")
    records = {(r.variant, r.id): r for r in run.records}
    for _, row in shown.head(20).iterrows():
        r = records[(row["方案"], row["编号"])]
        rl = row["ROUGE-L"]
        label = f"{row['编号']} · {row['方案']} · ROUGE-L {rl:.3f} · {row['问题']}" if rl == rl and rl is not None \
            else f"{row['编号']} · {row['方案']} · {row['问题']}"
        with st.expander(md_escape(label)):
            left, right = st.columns(2)
            with left:
                st.markdown("**参考答案**")
                st.markdown(md_escape(r.reference))
                if r.evidence:
                    st.caption("证据：" + md_escape(r.evidence))
            with right:
                st.markdown("**生成的回答**" + ("（拒答）" if r.refused else ""))
                st.markdown(md_escape(r.answer) if not r.error else "")
                if r.error:
                    st.error(md_escape(r.error.splitlines()[0]))
                cites = r.citations
                if cites:
                    st.caption("引用：" + md_escape("；".join(f"[{c['n']}] {c['source']}" for c in cites)))


def render(settings: Settings, variants: dict[str, Variant], models: Any, corpus: Path | None) -> None:
    from ragbot.evaluation.runner import load_qa
    from ragbot.store import IndexStore
    from ui.kb import UploadError, upload_limit_bytes
    from ui.progress import StreamlitProgress
    from ui.render import md_escape
    from ui.resources import describe

    st.subheader("📊 ROUGE 评测")
    st.caption("在一组带参考答案的问题上比较不同方案：ROUGE、检索命中、拒答和引用质量、回答句子有无资料依据、延迟。"
               "结果同时写入评测历史（与 `ragbot eval --history` 共用）。")
    bundled = bundled_qa(corpus)
    history_path = settings.home / "eval_history.db"

    with st.container(border=True):
        c1, c2 = st.columns([3, 2])
        with c1:
            sources = (["内置评测集"] if bundled else []) + ["上传 JSONL"]
            source = st.radio("评测集", sources, horizontal=True, key="ev_source")
            qa_path = bundled if source == "内置评测集" else None
            if source == "上传 JSONL":
                up = st.file_uploader("每行一个 JSON：id, question, answer, evidence, source, type", type=["jsonl"],
                                      key="ev_upload")
                if up is not None:
                    try:
                        qa_path = save_qa_upload(settings, up.name, up.getvalue(), upload_limit_bytes())
                    except UploadError as e:
                        st.error(md_escape(str(e)), icon="🚫")
            items = []
            if qa_path is not None:
                try:
                    items = load_qa(qa_path)
                except ConfigError as e:
                    st.error(md_escape(str(e)))
        with c2:
            names = list(variants)
            chosen = st.multiselect("方案", names, default=[n for n in ("ragbot",) if n in names], key="ev_variants",
                                    help="\n".join(f"- **{n}**：{describe(v)}" for n, v in variants.items()))
            limit = st.number_input("题数（从第 1 题起）", min_value=1, value=min(5, max(1, len(items))), step=1,
                                    key="ev_limit", help="在 CPU 上每题每个方案大约需要 5–10 秒")
            if items:
                st.caption(f"评测集共 {len(items)} 题，将评测前 {min(int(limit), len(items))} 题。")
        ready = bool(items) and bool(chosen) and IndexStore.exists(settings.index_path)
        if not IndexStore.exists(settings.index_path):
            st.info("请先在“知识库”页导入文档。", icon="📭")
        cancelled = st.session_state.pop("ev_cancelled", None)
        if cancelled is not None:
            done, total = cancelled
            st.warning(f"上一次评测已取消（评测进行时，页面上的其他操作会让它停下）：完成了 {done} / {total} 题，"
                       "结果没有保存。需要时请重新开始评测。", icon="⏹️")
        if st.button("开始评测", type="primary", key="ev_run", disabled=not ready, icon="▶️"):
            n_items = min(int(limit), len(items))
            with st.status(f"正在评测 {n_items} 题 × {len(chosen)} 个方案…", expanded=True) as status:
                progress = StreamlitProgress(st.container())
                try:
                    run = run_evaluation(settings, [variants[n] for n in chosen], items[:n_items],
                                         str(qa_path), models, progress)
                    st.session_state["ev_run_dir"] = str(run.out_dir)
                    status.update(label=f"评测完成：{run.run_id}", state="complete", expanded=False)
                except RagbotError as e:
                    status.update(label="评测失败", state="error")
                    st.error(md_escape(str(e)))
                except BaseException as e:
                    if not isinstance(e, Exception):  # Streamlit stopped this run for a click (not an error)
                        done = sum(b.done for b in progress.bars() if b.unit == "q")
                        st.session_state["ev_cancelled"] = (done, n_items * len(chosen))
                    raise

    runs = past_runs(history_path)
    current = st.session_state.get("ev_run_dir")
    if current and (Path(current) / "summary.json").exists():
        render_results(load_run(Path(current)))
    elif not runs:
        st.info("还没有评测记录。选择评测集和方案，点“开始评测”。", icon="📋")

    if runs:
        st.divider()
        st.markdown("#### 🕘 历史评测")
        by_id = {r["run_id"]: r for r in runs}
        h1, h2 = st.columns([4, 1], vertical_alignment="bottom")
        pick = h1.selectbox("打开一次历史评测", list(by_id), format_func=lambda rid: _run_label(by_id[rid]),
                            key="ev_history_pick")
        openable = pick and (Path(by_id[pick]["out_dir"]) / "summary.json").exists()
        if h2.button("打开", key="ev_history_open", disabled=not openable, width="stretch"):
            st.session_state["ev_run_dir"] = by_id[pick]["out_dir"]
            st.rerun()
        compare = st.multiselect("对比多次评测", list(by_id), default=list(by_id)[:2],
                                 format_func=lambda rid: _run_label(by_id[rid]), key="ev_history_compare")
        if compare:
            st.dataframe(runs_frame([by_id[r] for r in compare]), hide_index=True, width="stretch")
