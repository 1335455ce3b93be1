"""The app's pages with fake models, through streamlit.testing.v1.AppTest (no browser, no real models)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ragbot.evaluation.arena import VoteStore
from ragbot.settings import REFUSAL
from ragbot.store import IndexStore, bm25_tokens

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
    assert any("大模型：" in c and "transformers (in-process" in c for c in texts(app.sidebar.caption))  # the backend
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


def test_follow_up_is_rewritten_and_shown_in_debug(app, monkeypatch):
    import ragbot.testing

    answer = ragbot.testing.copy_first_sentence
    rewrites = []  # the model rewrites when it may not cite (the rewrite call), answers as before otherwise

    def model(messages, citable=0):
        if citable:
            return answer(messages, citable)
        rewrites.append(messages)
        return "改写后的问题：LoRA 和全参数微调相比如何？"

    monkeypatch.setattr(ragbot.testing, "copy_first_sentence", model)
    ask(app, "LoRA 为什么能减少显存占用？")
    assert rewrites == []  # the first question needs no rewrite
    ask(app, "那它和全参数微调比呢？")
    debug = [m for m in texts(app.markdown) if "检索用的问题" in m]
    assert len(debug) == 2
    assert "LoRA 和全参数微调相比如何" in debug[1] and "由模型根据对话历史改写" in debug[1]
    assert "用户：LoRA 为什么能减少显存占用？" in rewrites[0][-1]["content"]  # the history reached the rewriter
    turn = app.session_state["chat_turns"][1]
    assert turn.rewrite.method == "llm" and turn.answer.retrieval.query == "LoRA 和全参数微调相比如何？"


def test_an_unusable_rewrite_falls_back_to_the_previous_key_terms(app):
    ask(app, "LoRA 为什么能减少显存占用？")
    ask(app, "那它和全参数微调比呢？")  # the copying model's "rewrite" repeats the history: not usable
    turn = app.session_state["chat_turns"][1]
    assert turn.rewrite.method in ("heuristic", "llm") and "LoRA" in turn.rewrite.question


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
    from ragbot.models import ModelCache

    built = []
    original = ModelCache.pipeline
    monkeypatch.setattr(ModelCache, "pipeline", lambda self, s, r=True: built.append(s) or original(self, s, r))
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
    before = store.vector_count()
    app.multiselect(key="kb_delete_select").set_value([lora.doc_id]).run()
    app.button(key="kb_delete").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("已删除 1 个文档" in s for s in texts(app.success))
    store = IndexStore.load(app_env.index_path)
    assert lora.doc_id not in store.manifest.files
    assert store.vector_count() == before - len(lora.chunk_ids)
    assert all(c.source != "lora.md" for c in store.chunks.values())
    assert not any(c.source == "lora.md" for c, _ in store.search_bm25(bm25_tokens("LoRA 低秩 适配"), 50))
    ask(app, "LoRA 冻结预训练权重吗？")  # the next question sees the new index (no stale cached pipeline)
    answer = app.session_state["chat_turns"][0].answer
    assert all(p.chunk.source != "lora.md" for p in answer.passages)


def test_compacting_after_a_delete_drops_its_rows_from_disk(app, app_env):
    store = IndexStore.load(app_env.index_path)
    lora = next(r for r in store.manifest.files.values() if r.source == "lora.md")
    app.multiselect(key="kb_delete_select").set_value([lora.doc_id]).run()
    app.button(key="kb_delete").click().run()
    assert len(IndexStore.load(app_env.index_path).dead) == len(lora.chunk_ids)
    assert any(f"{len(lora.chunk_ids)} 个已删除的分块等待压缩" in c.value for c in app.caption)
    app.button(key="kb_compact").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any(f"索引已压缩：{len(lora.chunk_ids)} 个已删除的分块从磁盘移除" in s for s in texts(app.success))
    store = IndexStore.load(app_env.index_path)
    assert not store.dead and lora.doc_id not in store.manifest.files and len(store) == store.vector_count()
    assert any("1 个分段；0 个已删除的分块等待压缩" in c.value for c in app.caption)


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


# ---------------------------------------------------------------- hostile text stays data


def test_streamed_answer_is_escaped_like_the_final_one(app, monkeypatch, autolinks):
    from streamlit.elements.markdown import MarkdownMixin

    import ragbot.testing

    hostile = "LoRA 冻结权重 ![x](http://127.0.0.1:9/leak) 详见 http://evil.example/a 或 www.evil.example [1]"
    monkeypatch.setattr(ragbot.testing, "copy_first_sentence", lambda messages, citable=0: hostile)
    drawn = []  # every Markdown body drawn through a placeholder (what the browser sees while streaming)
    original = MarkdownMixin.markdown
    monkeypatch.setattr(MarkdownMixin, "markdown", lambda self, body, *a, **kw: drawn.append(str(body))
                        or original(self, body, *a, **kw))
    ask(app, "LoRA 为什么能减少显存占用？")
    streamed = [b for b in drawn if "127.0.0.1" in b]
    final = [m.value for m in app.markdown if "127.0.0.1" in m.value]
    assert len(streamed) >= 3 and final  # piece by piece, then the final rendering
    for body in streamed + final:
        assert not re.search(r"(?<!\\)\]\((?!#cite-)|(?<!\\):(?=//)", body), body  # no link or image but citations
        assert autolinks(body) == [], body  # and no bare URL that Markdown would make clickable
    assert "(#cite-0-1" in final[0]  # the citation is still a link to its passage


def test_too_long_question_is_refused_before_anything_runs(app, monkeypatch):
    from ragbot.models import ModelCache

    pipeline = ModelCache.pipeline
    monkeypatch.setattr(ModelCache, "pipeline", lambda *a, **kw: pytest.fail("nothing may run for a refused question"))
    ask(app, "长" * 2001)
    turn = app.session_state["chat_turns"][0]
    assert turn.answer is None and "问题太长：2001 个字符，超过上限 2000" in turn.error
    assert any("问题太长" in e and "max_question_chars" in e for e in texts(app.error))
    monkeypatch.setattr(ModelCache, "pipeline", pipeline)
    ask(app, "LoRA 为什么能减少显存占用？")  # the conversation goes on
    assert app.session_state["chat_turns"][1].answer is not None


def test_library_question_limit_is_shown_clearly(app, monkeypatch):
    from ragbot.errors import QuestionTooLongError
    from ragbot.pipeline import RagPipeline

    def refuse(self, question, top_k=None):
        raise QuestionTooLongError("the question has 3001 characters, more than max_question_chars (2000)")

    monkeypatch.setattr(RagPipeline, "retrieve", refuse)  # e.g. a rewritten question that grew too long
    ask(app, "LoRA 为什么能减少显存占用？")
    assert any("问题太长" in e and "max_question_chars (2000)" in e for e in texts(app.error))


# ---------------------------------------------------------------- uploads and knowledge-base jobs


def test_upload_batch_keeps_same_named_files_apart_and_caps_their_number(app, app_env, monkeypatch):
    monkeypatch.setenv("RAGBOT_UI_MAX_UPLOAD_FILES", "3")
    app.tabs[1].file_uploader[0].set_value([
        ("a/x.md", "# 甲\n\n第一份同名文档。\n".encode(), "text/markdown"),
        ("b\\x.md", "# 乙\n\n第二份同名文档。\n".encode(), "text/markdown"),
        ("x?.md", "# 丙\n\n第三份同名文档。\n".encode(), "text/markdown"),
        ("extra.md", "# 丁\n\n第四份，超出数量上限。\n".encode(), "text/markdown"),
    ]).run()
    app.button(key="kb_ingest").click().run()
    assert not app.exception, [e.value for e in app.exception]
    uploads = app_env.home / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == ["x (2).md", "x (3).md", "x.md"]  # no temp file left either
    assert "第二份" in (uploads / "x (2).md").read_text(encoding="utf-8")
    assert any("extra.md" in w and "一次最多上传 3 个文件" in w for w in texts(app.warning))
    sources = {r.source for r in IndexStore.load(app_env.index_path).manifest.files.values()}
    assert {"x.md", "x (2).md", "x (3).md"} <= sources and "extra.md" not in sources
    # a later batch with the same name updates that file, as the uploader's label says
    app.tabs[1].file_uploader[0].set_value([("x.md", "# 甲\n\n更新后的文档。\n".encode(), "text/markdown")]).run()
    app.button(key="kb_ingest").click().run()
    assert "更新后" in (uploads / "x.md").read_text(encoding="utf-8") and len(list(uploads.iterdir())) == 3
    assert any("更新 1 个" in s for s in texts(app.success))


def test_a_click_during_an_ingest_does_not_stop_it(app, app_env, monkeypatch):
    import threading

    from ui import kb
    from ui.resources import get_jobs

    gate, perform, follow = threading.Event(), kb.perform, kb.JobView.follow

    def slow(settings, embedder_for, request, progress=None):
        progress(total=4, desc="embed", unit="chunk").update(1)
        assert gate.wait(30)
        return perform(settings, embedder_for, request, progress)

    monkeypatch.setattr(kb, "perform", slow)
    # the run that started the job is stopped (as by a click) before it could wait for the job
    monkeypatch.setattr(kb.JobView, "follow", lambda self: None)
    app.tabs[1].file_uploader[0].set_value([("new.md", "# 新文档\n\n梯度裁剪限制梯度范数。\n".encode(),
                                             "text/markdown")]).run()
    app.button(key="kb_ingest").click().run()
    assert not app.exception, [e.value for e in app.exception]
    app.run()  # any later rerun shows the running job, with its progress, and no second job can start
    assert any("正在导入文档" in m for m in texts(app.markdown))
    assert any("向量化：1/4" in p.proto.text for p in app.get("progress"))
    assert app.button(key="kb_reingest").disabled and app.button(key="kb_ingest").disabled
    job = get_jobs().get(kb.job_key(app_env))
    assert not job.done
    gate.set()
    assert job.wait(30)  # it ran to the end with nobody polling
    assert "new.md" in {r.source for r in IndexStore.load(app_env.index_path).manifest.files.values()}
    monkeypatch.setattr(kb.JobView, "follow", follow)
    app.run()  # the next rerun shows its outcome
    assert any("导入完成：新增 1 个" in s for s in texts(app.success))
    assert "new.md" in set(frame_with(app, "分块数")["文件"])


def test_reingest_that_would_empty_the_index_asks_first(app, app_env, corpus):
    (corpus / "lora.md").unlink()
    (corpus / "adam.md").unlink()
    app.button(key="kb_reingest").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("2 / 3 个文件" in w for w in texts(app.warning))
    dropped = frame_with(app, "原因")
    assert sorted(dropped["文件"]) == ["adam.md", "lora.md"] and set(dropped["原因"]) == {"文件已不存在"}
    assert len(IndexStore.load(app_env.index_path).manifest.files) == 3  # nothing published yet
    app.run()  # still waiting for an answer after an unrelated rerun
    app.button(key="kb_force").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert [r.source for r in IndexStore.load(app_env.index_path).manifest.files.values()] == ["unsafe.md"]
    assert any("导入完成" in s for s in texts(app.info)) and not any(b.key == "kb_force" for b in app.button)
    assert any("lora.md" in e and "未能导入" in e for e in texts(app.error))  # each dropped file, with its reason


def test_cancelling_the_confirmation_keeps_the_index(app, app_env, corpus):
    for name in ("lora.md", "adam.md", "unsafe.md"):
        (corpus / name).unlink()
    app.button(key="kb_reingest").click().run()
    assert any("3 / 3 个文件" in w for w in texts(app.warning))
    app.button(key="kb_force_cancel").click().run()
    assert any("已取消重新导入全部文档" in i for i in texts(app.info))
    assert not any(b.key == "kb_force" for b in app.button)
    assert len(IndexStore.load(app_env.index_path).manifest.files) == 3


def test_interrupted_evaluation_is_reported_as_cancelled(app, app_env, monkeypatch):
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from ragbot.evaluation.runner import EvalRunner

    answered, one = [], EvalRunner._one

    def stop_after_two(*args, **kwargs):
        if len(answered) == 2:
            raise StopException()  # what Streamlit raises in the script when the user clicks meanwhile
        answered.append(1)
        return one(*args, **kwargs)

    monkeypatch.setattr(EvalRunner, "_one", staticmethod(stop_after_two))
    app.number_input(key="ev_limit").set_value(3).run()
    app.button(key="ev_run").click().run()
    monkeypatch.setattr(EvalRunner, "_one", staticmethod(one))
    app.run()
    assert any("评测已取消" in w and "完成了 2 / 3 题" in w for w in texts(app.warning))
    assert not (app_env.home / "eval_history.db").exists()  # nothing half-done was recorded


def test_run_script_listens_on_localhost_unless_told(tmp_path):
    import os
    import shutil
    import subprocess

    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(APP.parents[1] / "scripts" / "run.sh", root / "scripts" / "run.sh")
    stubs = {"scripts/setup.sh": "exit 0", ".venv/bin/ragbot": "exit 0",
             ".venv/bin/streamlit": 'printf "%s\\n" "$@" > "$ARGS_OUT"'}
    for name, body in stubs.items():
        (root / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (root / name).chmod(0o755)

    def args(**env: str) -> list[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAGBOT_")}
        subprocess.run(["bash", str(root / "scripts" / "run.sh")], env={**base, "ARGS_OUT": str(tmp_path / "args"),
                                                                      **env}, check=True, capture_output=True)
        return (tmp_path / "args").read_text().splitlines()

    default = args()
    assert default[default.index("--server.address") + 1] == "127.0.0.1"
    opened = args(RAGBOT_ADDRESS="0.0.0.0")
    assert opened[opened.index("--server.address") + 1] == "0.0.0.0"


def test_run_script_installs_llamacpp_and_goes_on_without_it_when_the_build_fails(tmp_path):
    import os
    import shutil
    import subprocess

    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(APP.parents[1] / "scripts" / "run.sh", root / "scripts" / "run.sh")
    calls = tmp_path / "calls"
    stubs = {"scripts/setup.sh": f'echo "$1" >> {calls}; [ "$1" != "cpu,ui,llamacpp" ] || [ -z "$NO_CXX" ]',
             ".venv/bin/ragbot": '[ "$1" != prepare ]', ".venv/bin/streamlit": "exit 0"}  # prepare fails: app starts
    for name, body in stubs.items():
        (root / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (root / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAGBOT_")}

    subprocess.run(["bash", str(root / "scripts" / "run.sh")], env=base, check=True, capture_output=True)
    assert calls.read_text().split() == ["cpu,ui,llamacpp"]
    calls.unlink()
    done = subprocess.run(["bash", str(root / "scripts" / "run.sh")], env={**base, "NO_CXX": "1"}, check=True,
                          capture_output=True, text=True)
    assert calls.read_text().split() == ["cpu,ui,llamacpp", "cpu,ui"]
    assert "installing the llamacpp extra failed" in done.stderr and "transformers instead" in done.stderr
    calls.unlink()  # later runs do not build again (and do not warn again) until .venv/.no-llamacpp is removed
    again = subprocess.run(["bash", str(root / "scripts" / "run.sh")], env=base, check=True, capture_output=True,
                           text=True)
    assert calls.read_text().split() == ["cpu,ui"] and "failed" not in again.stderr
    (root / ".venv" / ".no-llamacpp").unlink()
    calls.unlink()
    subprocess.run(["bash", str(root / "scripts" / "run.sh")], env=base, check=True, capture_output=True)
    assert calls.read_text().split() == ["cpu,ui,llamacpp"]
