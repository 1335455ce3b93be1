"""Follow-up questions rewritten into standalone ones (ragbot/rewrite.py)."""

from __future__ import annotations

from ragbot.rewrite import (
    REWRITE_SYSTEM,
    clean_rewrite,
    heuristic_rewrite,
    key_terms,
    needs_context,
    rewrite_messages,
    rewrite_question,
    usable,
)

HISTORY = [("user", "LoRA 为什么能减少显存占用？"), ("assistant", "因为 LoRA 冻结原权重，只训练低秩矩阵 [1]。")]


def test_no_history_means_no_rewrite_and_no_llm_call():
    calls = []
    r = rewrite_question([], "那它和全参数微调比呢？", lambda m: calls.append(m) or "x")
    assert (r.question, r.method, calls) == ("那它和全参数微调比呢？", "none", [])


def test_standalone_question_is_kept():
    r = rewrite_question(HISTORY, "BM25 的参数 k1 控制什么？", lambda m: "不该被调用")
    assert r.method == "standalone" and r.question == "BM25 的参数 k1 控制什么？"


def test_llm_rewrite_is_used_when_it_names_the_subject():
    seen = []

    def chat(messages):
        seen.append(messages)
        return "改写后的问题：“LoRA 和全参数微调相比有什么不同？”\n解释：……"

    r = rewrite_question(HISTORY, "那它和全参数微调比呢？", chat)
    assert r.method == "llm" and r.question == "LoRA 和全参数微调相比有什么不同？" and r.changed
    system, user = seen[0]
    assert system["content"] == REWRITE_SYSTEM
    assert "用户：LoRA 为什么能减少显存占用？" in user["content"] and "[1]" not in user["content"]
    assert user["content"].endswith("追问：那它和全参数微调比呢？\n改写后的问题：")


def test_unusable_llm_output_falls_back_to_key_terms():
    for reply in ("", "资料中没有相关信息", "那它和全参数微调比呢？", "好" * 400):
        r = rewrite_question(HISTORY, "那它和全参数微调比呢？", lambda m, reply=reply: reply)
        assert r.method == "heuristic", reply
        assert r.question.startswith("关于LoRA") and r.question.endswith("那它和全参数微调比呢？")


def test_llm_errors_fall_back_too():
    def boom(messages):
        raise RuntimeError("model crashed")

    r = rewrite_question(HISTORY, "它的缺点呢？", boom)
    assert r.method == "heuristic" and "model crashed" in r.raw


def test_helpers():
    assert key_terms("LoRA 为什么能减少显存占用？") == ["LoRA", "减少", "显存", "占用"]
    assert needs_context("那它呢？") and needs_context("和全参数微调比呢") and not needs_context("Adam 的 beta2 默认是多少？")
    assert clean_rewrite("\n  问题： 「Adam 的默认学习率？」 ") == "Adam 的默认学习率？"
    assert usable("LoRA 的缺点是什么？", "它的缺点呢？", "LoRA 为什么省显存？")
    assert not usable("它的缺点是什么？", "它的缺点呢？", "LoRA 为什么省显存？")
    assert heuristic_rewrite("什么是？", "那呢") == "什么是？ 那呢"
    assert len(rewrite_messages(HISTORY * 5, "它呢？")[1]["content"].splitlines()) == 2 * 2 + 4


def test_conversation_rewrites_follow_ups_against_its_turns():
    from ragbot.rewrite import Conversation
    from ragbot.testing import FakeChatModel
    from ragbot.types import Answer

    model = FakeChatModel("LoRA 和全参数微调相比如何？")
    conv = Conversation(model)
    first = conv.standalone("LoRA 为什么能减少显存占用？")
    assert first.method == "none" and model.messages == []  # nothing to rewrite against yet
    conv.add(first, Answer(first.question, "LoRA 只训练低秩矩阵 [1]。", False, (), ()))
    follow = conv.standalone("那它和全参数微调比呢？")
    assert follow.method == "llm" and follow.question == "LoRA 和全参数微调相比如何？"
    assert "用户：LoRA 为什么能减少显存占用？" in model.messages[0][-1]["content"] and model.citable == [0]
    conv.reset()
    assert conv.standalone("那它呢？").method == "none"
    assert Conversation(None, conv.history + [("user", "LoRA 是什么？")]).standalone("那它呢？").method == "heuristic"


def test_a_new_subject_is_not_pulled_into_the_previous_topic():
    # "RWKV 是什么？" is short but names its own subject: it stands alone, and the key-term gate can refuse it
    assert not needs_context("RWKV 是什么？") and needs_context("为什么？") and needs_context("那 QLoRA 呢？")
    assert rewrite_question(HISTORY, "RWKV 是什么？", lambda m: "为什么 LoRA 会减少显存占用？").method == "standalone"
    # a rewrite that drops the follow-up's own term is not used; the fallback keeps it
    rewrite = rewrite_question(HISTORY, "那 QLoRA 呢？", lambda m: "LoRA 为什么能减少显存占用？")
    assert rewrite.method == "heuristic" and "QLoRA" in rewrite.question
    assert rewrite_question(HISTORY, "那 QLoRA 呢？", lambda m: "QLoRA 和 LoRA 有什么区别？").method == "llm"
