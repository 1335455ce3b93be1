"""The app's pages with fake models, through streamlit.testing.v1.AppTest (no browser, no real models)."""

from __future__ import annotations

import re
from pathlib import Path

from ragbot.arena import VoteStore
from ragbot.settings import REFUSAL
from ragbot.store import IndexStore

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"


def ask(at, question):
    at.chat_input(key="chat_input").set_value(question).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements):
    """Element texts with Markdown escapes removed (the app escapes every untrusted string)."""
    return [e.value.replace("\\", "") for e in elements]


def frame_with(at, column):
    """The first dataframe shown with ``column`` (st.dataframe keys are not exposed to AppTest)."""
    return next(df.value for df in at.dataframe if column in getattr(df.value, "columns", []))


def html_bodies(at):
    return [h.proto.body for h in at.get("html")]


def test_starts_with_title_tabs_and_sidebar(app):
    assert [t.label for t in app.tabs][:4] == ["💬 问答", "📚 知识库", "📊 ROUGE 评测", "⚔️ Elo 竞技场"]
    assert any("3 个文档" in c for c in texts(app.sidebar.caption))
    assert app.selectbox(key="opt_variant").value == "ragbot"
    assert any("有什么想问的" in m for m in texts(app.markdown))  # the empty state


def test_chat_answers_with_clickable_citation_and_sources(app):
    ask(app, "LoRA 为什么能减少显存占用？")
    answer = next(m for m in texts(app.markdown) if "(#cite-0-1" in m)
    assert "显存占用大幅减少" in answer
    assert '"lora.md · LoRA › 原理' in answer  # hover title: file and heading path
    sources = "".join(html_bodies(app))
    assert 'id="cite-0-1"' in sources and "lora.md · LoRA › 原理" in sources
    assert "<mark" in sources and "显存占用大幅减少" in sources  # the supporting sentence is highlighted
    debug = next(m for m in texts(app.markdown) if "检索用的问题" in m)
    assert "首个问题" in debug
    assert len(app.get("arrow_data_frame")) >= 1 or len(app.dataframe) >= 1


def test_example_question_button_asks_it(app):
    app.button(key="chat_example_0").click().run()
    assert not app.exception
    assert any("LoRA 为什么能减少微调的显存占用" in m for m in texts(app.markdown))
    assert app.session_state["chat_turns"][0].answer is not None


def test_refusal_is_a_notice_not_an_answer(app):
    ask(app, "RWKV 是什么？")
    notices = [i for i in texts(app.info) if REFUSAL in i]
    assert notices and "RWKV" in notices[0]
    assert not any("cite-0-" in h for h in html_bodies(app))
    assert app.session_state["chat_turns"][0].answer.refused


def test_follow_up_is_rewritten_and_shown_in_debug(app):
    ask(app, "LoRA 为什么能减少显存占用？")
    ask(app, "那它和全参数微调比呢？")
    debug = [m for m in texts(app.markdown) if "检索用的问题" in m]
    assert len(debug) == 2
    assert "那LoRA和全参数微调比呢" in debug[1] and "由模型根据对话历史改写" in debug[1]
    turn = app.session_state["chat_turns"][1]
    assert turn.rewrite.method == "llm" and turn.answer.retrieval.query == "那LoRA和全参数微调比呢？"


def test_document_html_is_shown_as_text(app):
    ask(app, "恶意片段 script 与 img 会怎样显示？")
    bodies = "".join(html_bodies(app))
    assert "&lt;script&gt;" in bodies and "&lt;img src=x onerror=alert(1)&gt;" in bodies
    assert "<script" not in bodies and "<img" not in bodies
    answer = next(m.value for m in app.markdown if "cite-0-1" in m.value)
    text, link = answer.split("[\\[1\\]]", 1)
    assert "\\<script\\>" in text and not re.search(r"(?<!\\)<", text)  # every < escaped: shown literally
    assert link.startswith("(#cite-0-1 \"")  # the passage in the link's tooltip is an attribute value: plain text


def test_top_k_change_reloads_nothing(app, monkeypatch):
    from ui.resources import Models

    built = []
    original = Models.pipeline
    monkeypatch.setattr(Models, "pipeline", lambda self, s, r=True: built.append(s) or original(self, s, r))
    ask(app, "LoRA 的秩常取多少？")
    app.slider(key="opt_top_k").set_value(2).run()
    ask(app, "Adam 的 beta2 是多少？")
    assert len(app.session_state["chat_turns"][1].answer.passages) == 2
    assert len(built) <= 1  # at most the first pipeline (it may be cached from the first run already)


def test_missing_index_offers_to_ingest_the_corpus(app_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert any("还没有知识库索引" in i for i in texts(at.info))
    at.button(key="setup_corpus").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert IndexStore.exists(app_env.index_path)
    assert len(IndexStore.load(app_env.index_path).manifest.files) == 3
    assert any("导入完成" in s for s in texts(at.success))
    assert at.chat_input(key="chat_input") is not None


def test_upload_checks_type_size_and_name_on_the_server(app, app_env, monkeypatch):
    # (Streamlit's uploader itself rejects other extensions server-side; ui.kb checks them again: test_kb.py)
    monkeypatch.setenv("RAGBOT_UI_MAX_UPLOAD_MB", "0.01")  # about 10 KB
    uploader = app.tabs[1].file_uploader[0]
    uploader.set_value([
        ("../../escape/新文档.md", "# 新文档\n\n这是一份上传的新文档，讲的是梯度裁剪。\n".encode(), "text/markdown"),
        ("big.txt", b"x" * 20_000, "text/plain"),
        ("fake.pdf", b"not a pdf at all", "application/pdf"),
    ]).run()
    app.button(key="kb_ingest").click().run()
    assert not app.exception, [e.value for e in app.exception]
    warnings = " ".join(texts(app.warning))
    assert "big.txt" in warnings and "超过上限" in warnings
    assert "fake.pdf" in warnings and "不是 PDF" in warnings
    uploads = app_env.home / "uploads"
    assert [p.name for p in uploads.iterdir()] == ["新文档.md"]  # directory parts dropped: nothing escaped
    assert not (app_env.home.parent / "escape").exists()
    sources = {r.source for r in IndexStore.load(app_env.index_path).manifest.files.values()}
    assert "新文档.md" in sources


def test_ingest_errors_are_shown_per_file(app, app_env):
    app.tabs[1].file_uploader[0].set_value([("binary.txt", b"\x00\x01\x02\x03" * 64, "text/plain"),
                                            ("ok.md", "# 好文档\n\n内容正常。\n".encode(), "text/markdown")]).run()
    app.button(key="kb_ingest").click().run()
    assert not app.exception, [e.value for e in app.exception]
    errors = [e for e in texts(app.error) if "binary.txt" in e]
    assert errors and "binary" in errors[0]  # the loader's reason, per file
    assert any("新增 1 个" in i for i in texts(app.info))  # the good file still went in


def test_delete_removes_a_document_everywhere(app, app_env):
    store = IndexStore.load(app_env.index_path)
    lora = next(r for r in store.manifest.files.values() if r.source == "lora.md")
    before = store.dense.ntotal
    app.multiselect(key="kb_delete_select").set_value([lora.doc_id]).run()
    app.button(key="kb_delete").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("已删除 1 个文档" in s for s in texts(app.success))
    store = IndexStore.load(app_env.index_path)
    assert lora.doc_id not in store.manifest.files
    assert store.dense.ntotal == before - len(lora.chunk_ids)
    assert all(c.source != "lora.md" for c in store.chunks.values())
    assert all(store._bm25_order.count(cid) == 0 for cid in lora.chunk_ids)
    ask(app, "LoRA 冻结预训练权重吗？")  # the next question sees the new index (no stale cached pipeline)
    answer = app.session_state["chat_turns"][0].answer
    assert all(p.chunk.source != "lora.md" for p in answer.passages)


def test_reingest_all_rebuilds_the_index(app, app_env):
    app.button(key="kb_reingest").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("导入完成" in s for s in texts(app.success))
    assert len(IndexStore.load(app_env.index_path).manifest.files) == 3


def test_elo_vote_is_stored_and_reveals_the_names(app, app_env):
    app.text_input(key="arena_question").input("LoRA 的秩常取多少？").run()
    app.selectbox(key="arena_x").set_value("ragbot").run()
    app.selectbox(key="arena_y").set_value("llm-only").run()
    app.button(key="arena_go").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("回答 A" in m for m in texts(app.markdown))
    assert not any("揭晓" in s for s in texts(app.success))  # blind until the vote
    app.button(key="arena_vote_a").click().run()
    assert not app.exception, [e.value for e in app.exception]
    votes = VoteStore(app_env.home / "votes.db").list()
    assert len(votes) == 1 and votes[0].vote == "a" and {votes[0].variant_a, votes[0].variant_b} == {"ragbot", "llm-only"}
    reveal = next(s for s in texts(app.success) if "揭晓" in s)
    assert f"A = **{votes[0].variant_a}**" in reveal and f"B = **{votes[0].variant_b}**" in reveal
    board = frame_with(app, "Bradley–Terry")
    assert set(board["方案"]) == {"ragbot", "llm-only"}
    assert len(app.get("download_button")) == 1


def test_machine_judge_fills_labelled_votes(app, app_env):
    app.selectbox(key="judge_x").set_value("ragbot").run()
    app.selectbox(key="judge_y").set_value("llm-only").run()
    app.number_input(key="judge_n").set_value(2).run()
    app.button(key="judge_go").click().run()
    assert not app.exception, [e.value for e in app.exception]
    store = VoteStore(app_env.home / "votes.db")
    assert store.count(True) == 2 and store.count(False) == 0
    assert all(v.voter == "judge:ui-fake-llm" for v in store.list(True))
    app.radio(key="arena_voters").set_value("仅人工").run()
    assert any("还没有投票" in i for i in texts(app.info))


def test_rouge_tab_runs_three_questions_and_shows_tables(app, app_env):
    from ragbot.evaluation.report import History

    app.number_input(key="ev_limit").set_value(3).run()
    app.button(key="ev_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    questions = frame_with(app, "ROUGE-L")
    assert len(questions) == 3 and list(questions["编号"])[:1] and questions["ROUGE-L"].is_monotonic_increasing
    assert any("ROUGE-L（字）" in str(df.value.index.tolist()) for df in app.dataframe if hasattr(df.value, "index"))
    runs = History(app_env.home / "eval_history.db").runs()
    assert len(runs) == 1 and runs[0]["questions"] == 3
    assert (app_env.home / "eval" / runs[0]["run_id"] / "records.jsonl").exists()
    # sorting and filtering the per-question table
    app.toggle(key="ev_only_refused").set_value(True).run()
    refused = frame_with(app, "ROUGE-L")
    assert list(refused["编号"]) == ["t3"]
    # a past run can be reopened from the history
    app.button(key="ev_history_open").click().run()
    assert any(runs[0]["run_id"] in m for m in texts(app.markdown))


def test_llm_only_variant_answers_without_retrieval(app):
    app.selectbox(key="opt_variant").set_value("llm-only").run()
    ask(app, "LoRA 是什么？")
    turn = app.session_state["chat_turns"][0]
    assert turn.variant == "llm-only" and turn.answer.passages == ()
    assert any("不检索资料" in c for c in texts(app.caption))


def test_naive_variant_gets_its_own_index_on_request(app, app_env):
    from ragbot.variants import BUILTIN, variant_index_path

    app.selectbox(key="opt_variant").set_value("naive").run()
    assert any("需要先为它建立单独的索引" in w for w in texts(app.warning))
    app.button(key="chat_build_variant").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert IndexStore.exists(variant_index_path(app_env, BUILTIN["naive"].settings(app_env)))
    ask(app, "Adam 的 beta2 默认是多少？")
    turn = app.session_state["chat_turns"][0]
    assert turn.variant == "naive" and turn.answer.passages and not turn.error


def test_arena_draws_a_question_from_the_eval_set(app, corpus):
    import json

    app.button(key="arena_draw").click().run()
    questions = {json.loads(line)["question"] for line in (corpus / "qa.jsonl").read_text(encoding="utf-8").splitlines()}
    assert app.text_input(key="arena_question").value in questions
