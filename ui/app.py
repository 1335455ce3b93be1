"""ragbot web app: ``streamlit run ui/app.py``.

Four tabs over the same library the CLI uses: chat, knowledge base, ROUGE evaluation and the
Elo arena. Settings come from ``Settings.load()`` (``ragbot.toml``, ``RAGBOT_*``; the data lives in
``RAGBOT_HOME``). ``RAGBOT_UI_FAKE_MODELS=1`` swaps in instant fake models (tests, demos).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# `streamlit run ui/app.py` puts ui/ itself on sys.path; import our modules as the `ui` package instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import streamlit as st  # noqa: E402

from ragbot.errors import RagbotError  # noqa: E402
from ragbot.kb import KnowledgeBase  # noqa: E402
from ragbot.llm import describe as describe_llm  # noqa: E402
from ragbot.models import ModelCache  # noqa: E402
from ragbot.settings import Settings  # noqa: E402
from ragbot.store import IndexStore  # noqa: E402
from ragbot.variants import Variant, available  # noqa: E402
from ui import arena, chat, evaluate, kb  # noqa: E402
from ui.render import md_code, md_escape  # noqa: E402
from ui.resources import (  # noqa: E402
    PRELOAD_ENV,
    corpus_dir,
    describe,
    fake_models_enabled,
    get_models,
    get_pipeline,
    get_store,
    load_settings,
    reranker_spec,
)


def sidebar(base: Settings, variants: dict[str, Variant], models: ModelCache) -> chat.ChatOptions:
    with st.sidebar:
        st.markdown("## 📚 ragbot")
        st.caption("本地、私有的中文知识库问答。文档、问题和回答都不会离开这台机器。")
        st.markdown("#### 问答设置")
        names = list(variants)
        name = st.selectbox("方案（模型与流程）", names, index=names.index("ragbot") if "ragbot" in names else 0,
                            key="opt_variant")
        variant = variants[name]
        st.caption(md_escape(describe(variant)))
        top_k = st.slider("引用资料数 top-k", 1, 10, value=min(10, base.top_k), key="opt_top_k",
                          help="每个问题交给模型的资料段数")
        spec = reranker_spec(variant.settings(base)) if "reranker" not in variant.overrides else ""
        rerank = st.toggle("重排（reranker）", value=variant.settings(base).reranker not in ("", "none"),
                           disabled=not spec, key="opt_rerank",
                           help=f"用 {spec} 对融合后的候选重新排序" if spec else
                           "这个方案不使用重排，或者没有可用的重排模型（在 ragbot.toml 中设置 reranker）")
        temperature = st.slider("温度 temperature", 0.0, 1.5, value=float(base.temperature), step=0.1,
                                key="opt_temperature", help="0 = 贪心解码（最稳定）；越高越多样")
        if st.button("清空对话", key="opt_clear", icon="🧹", width="stretch"):
            st.session_state["chat_turns"] = []
        st.divider()
        st.markdown("#### 运行状态")
        if IndexStore.exists(base.index_path):
            try:
                manifest = get_store(base.index_path).manifest
                n_chunks = sum(len(r.chunk_ids) for r in manifest.files.values())
                st.caption(f"知识库：{len(manifest.files)} 个文档 · {n_chunks} 个分块")
            except RagbotError as e:
                st.caption(f"知识库无法打开：{md_escape(str(e))}")
        else:
            st.caption("知识库：尚未建立")
        st.caption(f"嵌入模型：{md_code(base.embedder)}  \n大模型：{md_code(describe_llm(base))}")
        loaded = models.loaded()
        st.caption("已加载：" + (md_escape("、".join(loaded)) if loaded else "（正在后台加载…）"))
        if models.preload_error:
            st.error(f"模型加载失败：{md_escape(models.preload_error)}", icon="⚠️")
        if models.fake:
            st.warning("演示模式：使用假模型（RAGBOT_UI_FAKE_MODELS）", icon="🧪")
    reranker = (spec if rerank else "none") if spec else ""
    return chat.ChatOptions(variant, chat.chat_settings(base, variant, temperature=temperature, reranker=reranker),
                            top_k)


def setup_panel(corpus: Path | None, jobs: kb.JobView) -> None:
    """Shown instead of the chat when there is no index yet."""
    from ingest.loaders import discover

    n_files = len(discover([corpus])[0]) if corpus is not None else 0
    sample = f"导入内置的示例语料（{n_files} 个文件）即可开始提问，也可以" if n_files else "请"
    st.info(f"还没有知识库索引。{sample}在“📚 知识库”页上传自己的文档。", icon="📭")
    jobs.slot()
    if corpus is not None and st.button(f"导入示例语料（{corpus.name}/）", type="primary", key="setup_corpus",
                                        icon="📦", disabled=jobs.running):
        jobs.start(kb.Request("ingest", (corpus,)))
    kb.show_outcome(st.session_state.get("kb_outcome"))


def ensure_variant_index(base: Settings, options: chat.ChatOptions, models: ModelCache) -> bool:
    """True when the chosen variant's index exists; otherwise offer to build it from the main index's files."""
    from ui.progress import StreamlitProgress

    if not options.variant.retrieval or IndexStore.exists(options.settings.index_path):
        return True
    st.warning(f"方案 **{md_escape(options.variant.name)}** 的切分方式或嵌入模型与主索引不同，需要先为它建立单独的索引"
               "（使用知识库里的同一批文件）。", icon="🧱")
    if st.button("建立索引", type="primary", key="chat_build_variant", icon="🧱"):
        with st.status("正在建立索引…", expanded=True):
            KnowledgeBase(base, embedder_for=models.embedder,
                          progress=StreamlitProgress(st.container())).ensure_variant_indexes([options.variant])
        st.rerun()
    return False


def main() -> None:
    st.set_page_config(page_title="ragbot · 本地知识库问答", page_icon="📚", layout="wide",
                       initial_sidebar_state="expanded")
    try:
        base = load_settings()
        variants = available(base)
    except RagbotError as e:
        st.error(f"设置有误：{md_escape(str(e))}", icon="⚠️")
        st.stop()
    models = get_models(fake_models_enabled())
    if os.environ.get(PRELOAD_ENV, "1") != "0":
        models.preload(base)
    corpus = corpus_dir()
    jobs = kb.JobView(base, models.embedder)  # first: a job that ended since the last run gives its outcome now
    options = sidebar(base, variants, models)

    st.markdown("### 📚 ragbot 知识库问答")
    tab_chat, tab_kb, tab_eval, tab_arena = st.tabs(["💬 问答", "📚 知识库", "📊 ROUGE 评测", "⚔️ Elo 竞技场"])
    has_index = IndexStore.exists(base.index_path)
    with tab_chat:
        if not has_index and options.variant.retrieval:
            setup_panel(corpus, jobs)
        elif ensure_variant_index(base, options, models):
            chat.render(options, get_pipeline)
    with tab_kb:
        kb.render(base, models.embedder, corpus, jobs)
    with tab_eval:
        evaluate.render(base, variants, models, corpus)
    with tab_arena:
        def answer_fn(variant_name: str, question: str):
            variant = variants[variant_name]
            vs = chat.chat_settings(base, variant, temperature=base.temperature, reranker="")
            if variant.retrieval and not IndexStore.exists(vs.index_path):
                KnowledgeBase(base, embedder_for=models.embedder).ensure_variant_indexes([variant])
            return get_pipeline(vs, variant.retrieval).ask(question, vs.top_k)

        def judge_fn():
            llm = models.chat_model(base)
            return lambda messages: llm.generate(messages, max_new_tokens=arena.JUDGE_TOKENS, temperature=0.0)

        if has_index:
            arena.render(base, variants, answer_fn, judge_fn, corpus)
        else:
            st.info("请先在“📚 知识库”页导入文档。", icon="📭")
    jobs.follow()  # last, so that every tab is drawn while this run waits for a knowledge-base job


main()
