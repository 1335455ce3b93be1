"""The generation stage (ragbot/generation.py): streamed text, then the final answer."""

import pytest

from ragbot.generation import Generator, finalize
from ragbot.settings import REFUSAL
from ragbot.testing import FakeChatModel
from ragbot.types import Chunk, ScoredChunk


def passages(n):
    return [ScoredChunk(Chunk(f"c{i}", "d", f"第{i}段资料。", "a.md", heading_path=("标题",)), 1.0, "fused")
            for i in range(1, n + 1)]


def test_finalize_refusal_has_exact_text_and_no_citations():
    answer = finalize("q", REFUSAL + "，但是 [1] 说……", passages(2))
    assert answer.refused and answer.text == REFUSAL and answer.citations == ()


def test_finalize_maps_citations_to_given_passages():
    ps = passages(3)
    answer = finalize("q", "事实 A [3]，事实 B [1][9]。", ps)
    assert [c.n for c in answer.citations] == [3, 1]
    assert answer.citations[0].chunk is ps[2].chunk
    assert answer.invalid_markers == 1 and "[9]" not in answer.text


def test_empty_answer_becomes_refusal():
    assert finalize("q", "  [5] ", passages(2)).refused


def test_generator_streams_clean_text_then_answer():
    model = FakeChatModel("答案是 X [1]，不是 [5]。")
    stream = Generator(model).stream("q", passages(2))
    pieces = list(stream)
    assert all(isinstance(p, str) for p in pieces) and len(pieces) > 1
    answer = stream.answer
    assert "".join(pieces) == answer.text == "答案是 X [1]，不是。" and answer.invalid_markers == 1
    assert not stream.rewritten
    assert answer.timings_ms["generate_ms"] >= answer.timings_ms["first_token_ms"] >= 0


def test_reading_the_answer_first_runs_the_generation_without_showing_it():
    stream = Generator(FakeChatModel("答案 [1]。")).stream("q", passages(1))
    assert stream.answer.text == "答案 [1]。" and stream.shown == "" and list(stream) == []


def test_a_repointed_citation_is_streamed_as_it_ends_up():
    ps = [ScoredChunk(Chunk(f"c{i}", "d", t, "a.md"), 1.0, "fused")
          for i, t in enumerate(["Adam 的默认 beta1 为 0.9。", "池化层没有可学习参数。"], start=1)]
    for piece_chars in (1, 2, 5):  # markers split across pieces in every way
        stream = Generator(FakeChatModel("池化层没有可学习参数 [1]。Adam 的默认 beta1 为 0.9 [1]。",
                                         piece_chars=piece_chars)).stream("q", ps)
        shown = "".join(stream)
        assert shown == stream.answer.text == "池化层没有可学习参数 [2]。Adam 的默认 beta1 为 0.9 [1]。"
        assert stream.answer.repointed_citations == 1 and [c.n for c in stream.answer.citations] == [2, 1]


@pytest.mark.parametrize("reply, rewritten", [
    ("池化层没有可学习参数。", True),  # cites nothing: alignment adds [1] after the stream
    (REFUSAL + "。抱歉。", True),  # any refusal becomes exactly the phrase
    (REFUSAL, False),
    ("池化层没有可学习参数 [1]。", False),
])
def test_the_stream_says_when_the_final_text_differs(reply, rewritten):
    ps = [ScoredChunk(Chunk("c1", "d", "池化层没有可学习参数。", "a.md"), 1.0, "fused")]
    stream = Generator(FakeChatModel(reply)).stream("q", ps)
    assert "".join(stream) == reply
    assert stream.rewritten is rewritten


def test_finalize_gives_what_streaming_gives():
    ps = passages(3)
    raw = "事实 A [3]，事实 B [1][9]。见【2】与 [资料1] 以及 [1-2]。数组 a[i] [7] 结束"
    stream = Generator(FakeChatModel(raw, piece_chars=2)).stream("q", ps)
    assert "".join(stream).strip() == stream.answer.text == finalize("q", raw, ps).text


def test_generator_refusal():
    answer = Generator(FakeChatModel(REFUSAL)).run("q", passages(2))
    assert answer.refused and answer.citations == ()


def test_uncited_answer_gets_aligned_citations():
    ps = [ScoredChunk(Chunk("c1", "d", "池化层没有可学习参数。", "a.md"), 1.0, "fused")]
    answer = finalize("q", "池化层没有可学习参数。", ps)
    assert answer.text == "池化层没有可学习参数 [1]。" and answer.aligned_citations == 1
    assert [c.n for c in answer.citations] == [1]
    plain = finalize("q", "池化层没有可学习参数。", ps, align=False)
    assert plain.citations == () and plain.aligned_citations == 0


def test_citation_to_an_unsupporting_passage_is_repointed():
    ps = [ScoredChunk(Chunk(f"c{i}", "d", t, "a.md"), 1.0, "fused")
          for i, t in enumerate(["Adam 的默认 beta1 为 0.9。", "池化层没有可学习参数。"], start=1)]
    answer = finalize("q", "池化层没有可学习参数 [1]。", ps)
    assert answer.text == "池化层没有可学习参数 [2]。" and answer.repointed_citations == 1
    assert [c.chunk.id for c in answer.citations] == ["c2"] and answer.raw_text == "池化层没有可学习参数 [1]。"
    kept = finalize("q", "池化层没有可学习参数 [1]。", ps, repoint=False)
    assert [c.n for c in kept.citations] == [1] and kept.repointed_citations == 0


def test_citation_only_output_is_treated_as_refusal():
    assert finalize("q", "[1]", passages(2)).refused


def test_a_reply_that_only_says_the_question_back_is_refused():
    # what a server's model may still do (the in-process backends' decoding rules prevent it)
    answer = Generator(FakeChatModel("**注意力为什么要除以根号 d** [1]。")).run("注意力为什么要除以根号 d？", passages(2))
    assert answer.refused and answer.text == REFUSAL and answer.refused_by == "echo"
    assert answer.raw_text == "**注意力为什么要除以根号 d** [1]。"
    short = Generator(FakeChatModel("Adam [1]。")).run("Adam 和 SGD 哪个更常用？", passages(2))
    assert not short.refused and short.text == "Adam [1]。"  # one word of the question is an answer


def test_generator_asks_for_valid_markers_only_when_grounded():
    chat = FakeChatModel("答案 [1]。")
    Generator(chat).run("问题", passages(2))
    Generator(chat, valid_markers=False).run("问题", passages(1))
    Generator(chat, style="plain").run("问题", passages(1))
    assert chat.citable == [2, 0, 0]
    assert chat.questions == ["问题", "问题", ""]  # the echo rule: a grounded answer may not just say it back
