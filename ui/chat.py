"""Chat tab: multi-turn questions, streamed answers with clickable citations, a debug panel per answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from ragbot.errors import QuestionTooLongError, RagbotError
from ragbot.pipeline import check_question
from ragbot.settings import REFUSAL, Settings
from ragbot.rewrite import Conversation, Rewrite
from ragbot.types import Answer
from ragbot.variants import Variant, variant_index_path
from ui.render import (
    STAGE_LABELS,
    answer_markdown,
    candidates_frame,
    md_escape,
    md_escape_answer,
    source_views,
    sources_html,
    timings_frame,
)

EXAMPLES = ("LoRA 为什么能减少微调的显存占用？", "BM25 里的参数 k1 和 b 分别控制什么？", "KV Cache 为什么能加快生成速度？")


@dataclass(frozen=True)
class ChatOptions:
    """What the sidebar chose; ``settings`` are the variant's settings with these applied."""

    variant: Variant
    settings: Settings
    top_k: int


@dataclass
class Turn:
    """One question and its answer (or the error that stopped it)."""

    question: str
    rewrite: Rewrite
    variant: str
    answer: Answer | None = None
    error: str = ""
    rewrite_ms: float = 0.0


def chat_settings(base: Settings, variant: Variant, *, temperature: float, reranker: str) -> Settings:
    """The settings one chat answer runs with: the variant's, the sidebar's temperature and reranker, its index.

    ``reranker`` is the sidebar's choice ("none" when switched off, "" to keep the variant's own).
    """
    vs = variant.settings(base)
    vs = vs.replace(temperature=temperature, reranker=reranker or vs.reranker)
    if variant.retrieval:
        vs = vs.replace(index_dir=variant_index_path(base, vs))
    return vs


def conversation(turns: list[Turn], chat_model: Any) -> Conversation:
    """The library's :class:`~ragbot.rewrite.Conversation` over the answered turns (their standalone questions)."""
    conv = Conversation(chat_model)
    for t in turns:
        if t.answer is not None:
            conv.add(t.rewrite, t.answer)
    return conv


def too_long(e: QuestionTooLongError) -> str:
    """The web app's words for a question over ``max_question_chars`` (the library's rule, ``check_question``)."""
    if not e.limit:
        return f"问题太长：{e}"
    return f"问题太长：{e.length} 个字符，超过上限 {e.limit} 个字符（设置项 max_question_chars）。请精简后再问。"


# ---------------------------------------------------------------- rendering


def render_refusal(answer: Answer) -> None:
    reason = ""
    if answer.refused_by.startswith("gate:"):
        reason = f"知识库中没有出现 **{md_escape(answer.refused_by[5:].strip())}**。"
    elif answer.refused_by == "echo":
        reason = "模型只重复了问题，没有回答。"
    st.info(f"**{REFUSAL}**  \n{reason}可以换个问法，或者在“知识库”页上传相关文档后再问。", icon="📭")


def render_debug(turn: Turn) -> None:
    answer = turn.answer
    with st.expander("🔍 调试信息：改写、检索候选、耗时", expanded=False):
        method = {"none": "首个问题，无需改写", "standalone": "问题本身完整，未改写", "llm": "由模型根据对话历史改写",
                  "heuristic": "模型改写不可用，已用上一问的关键词补全"}.get(turn.rewrite.method, turn.rewrite.method)
        st.markdown(f"**检索用的问题：** {md_escape(turn.rewrite.question)}  \n"
                    f"**原始问题：** {md_escape(turn.rewrite.original)}  \n**改写方式：** {method}")
        if turn.rewrite.raw and turn.rewrite.method == "heuristic":
            st.caption("模型的改写输出：" + md_escape(turn.rewrite.raw[:200]))
        if answer is None:
            return
        retrieval = answer.retrieval
        if retrieval is not None and (retrieval.dense or retrieval.bm25):
            stages = [(name, getattr(retrieval, name)) for name in ("dense", "bm25", "fused", "reranked")]
            tabs = st.tabs([f"{STAGE_LABELS[n]} ({len(h)})" for n, h in stages])
            for tab, (name, hits) in zip(tabs, stages):
                with tab:
                    if hits:
                        st.dataframe(candidates_frame(hits), hide_index=True, width="stretch")
                    else:
                        st.caption("这个阶段没有运行（未启用）或没有结果。")
        else:
            st.caption("这个方案不检索资料（只用模型本身回答）。")
        timings = {"rewrite_ms": turn.rewrite_ms, **answer.timings_ms} if turn.rewrite_ms else answer.timings_ms
        st.dataframe(timings_frame(timings), hide_index=True)
        if answer.invalid_markers or answer.aligned_citations or answer.repointed_citations:
            st.caption(f"删除了 {answer.invalid_markers} 个无效引用标记；按文字重合补充了 {answer.aligned_citations} 个引用，"
                       f"改正了 {answer.repointed_citations} 个引用的出处。")


def render_answer(turn: Turn, index: int, store: Any) -> None:
    """The assistant's side of a turn: answer with citation links and sources, or a refusal notice, then debug."""
    if turn.error:
        st.error(f"出错了：{md_escape(turn.error)}", icon="⚠️")
    elif turn.answer is not None and turn.answer.refused:
        render_refusal(turn.answer)
    elif turn.answer is not None:
        st.markdown(answer_markdown(turn.answer, index))
        if turn.answer.citations:
            st.html(sources_html(source_views(turn.answer, store), index))
        else:
            st.caption("（这个回答没有引用资料）")
        if turn.answer.finish_reason == "length":
            st.caption("（回答达到长度上限 max_new_tokens，被截断）")
    total = turn.answer.timings_ms.get("total_ms") if turn.answer is not None else None
    st.caption(f"方案 {md_escape(turn.variant)}" + (f" · 用时 {(total + turn.rewrite_ms) / 1000:.1f} 秒" if total else ""))
    render_debug(turn)


def render_turn(turn: Turn, index: int, store: Any) -> None:
    with st.chat_message("user"):
        st.markdown(md_escape(turn.question))
    with st.chat_message("assistant"):
        render_answer(turn, index, store)


# ---------------------------------------------------------------- the tab


def _set_pending(question: str) -> None:
    st.session_state["chat_pending"] = question


def render(options: ChatOptions, pipeline_for: Any) -> None:
    """``pipeline_for(settings, retrieval)`` returns the cached pipeline."""
    turns: list[Turn] = st.session_state.setdefault("chat_turns", [])
    pending = st.session_state.pop("chat_pending", None)
    messages = st.container()
    question = st.chat_input("问一个关于知识库的问题…", key="chat_input") or pending
    store = None
    if turns:  # already loaded by the first question: instant
        try:
            store = pipeline_for(options.settings, options.variant.retrieval).store
        except RagbotError:
            store = None  # the history still shows, without the passages' surrounding text
    with messages:
        if not turns and not question:
            with st.container(border=True):
                st.markdown("#### 👋 有什么想问的？")
                st.caption("回答只依据知识库中的文档，每句话都标注来源 [n]，点一下就能看到原文；资料里没有的，会直说。"
                           "可以连续追问，例如先问“LoRA 为什么省显存？”，再问“那它和全参数微调比呢？”。")
                cols = st.columns(len(EXAMPLES))
                for i, (col, example) in enumerate(zip(cols, EXAMPLES)):
                    col.button(example, key=f"chat_example_{i}", on_click=_set_pending, args=(example,), width="stretch")
        for i, turn in enumerate(turns):
            render_turn(turn, i, store)
        if question:
            ask(question, options, pipeline_for, turns)


def ask(question: str, options: ChatOptions, pipeline_for: Any, turns: list[Turn]) -> None:
    """Answer one question below the history: rewrite, retrieve, stream, then the final rendering."""
    index = len(turns)
    with st.chat_message("user"):
        st.markdown(md_escape(question))
    with st.chat_message("assistant"):
        slot = st.empty()
        turn = Turn(question, Rewrite(question, question, "none"), options.variant.name)
        pipeline = None
        with slot.container():
            try:
                check_question(question, options.settings.max_question_chars)  # before any model loads
                pipeline = pipeline_for(options.settings, options.variant.retrieval)  # loads models the first time
                conv = conversation(turns, pipeline.chat_model)
                t = time.perf_counter()
                if conv.history:
                    with st.spinner("正在结合上文理解问题…"):
                        turn.rewrite = conv.standalone(question)
                    turn.rewrite_ms = (time.perf_counter() - t) * 1000
                with st.spinner("正在检索资料…"):
                    retrieval = pipeline.retrieve(turn.rewrite.question, options.top_k)
                stream = pipeline.ask_stream(turn.rewrite.question, options.top_k, retrieval=retrieval)
                # escaped while it streams, exactly like the final rendering: raw model text would already
                # fetch an image or show a link before the answer is replaced
                shown, text = st.empty(), ""
                for piece in stream:
                    text += piece
                    shown.markdown(md_escape_answer(text))
                turn.answer = stream.answer
            except QuestionTooLongError as e:  # the question, or a rewritten one that grew too long
                turn.error = too_long(e)
            except Exception as e:  # shown in the chat instead of a traceback; the conversation goes on
                turn.error = f"{type(e).__name__}: {e}"
        turns.append(turn)
        with slot.container():
            render_answer(turn, index, pipeline.store if pipeline is not None else None)
