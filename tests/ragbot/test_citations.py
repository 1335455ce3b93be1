"""Citation markers (ragbot/citations.py): cleaning, re-pointing while streaming, alignment, what a citation rests on."""

import pytest

from ragbot.citations import (
    CitationStreamFilter,
    align_citations,
    cited_sentences,
    claims_by_citation,
    clean_citations,
    is_refusal,
    repoint_citations,
    support_spans,
)
from ragbot.settings import REFUSAL
from ragbot.types import Chunk, ScoredChunk


def passages(n):
    return [ScoredChunk(Chunk(f"c{i}", "d", f"第{i}段资料。", "a.md", heading_path=("标题",)), 1.0, "fused")
            for i in range(1, n + 1)]


@pytest.mark.parametrize("raw, n, text, cited, invalid", [
    ("LoRA 冻结原权重 [1]。", 3, "LoRA 冻结原权重 [1]。", (1,), 0),
    ("见 [1,2] 和 【3】。", 3, "见 [1][2] 和 [3]。", (1, 2, 3), 0),
    ("见［2］与[资料1]。", 2, "见[2]与[1]。", (2, 1), 0),
    ("编造 [7] 的引用 [2]。", 3, "编造 的引用 [2]。", (2,), 1),
    ("范围 [1-3]。", 2, "范围 [1][2]。", (1, 2), 1),
    ("[0] 和 [12, 1]", 2, "和 [1]", (1,), 2),
    ("无引用的回答。", 2, "无引用的回答。", (), 0),
    ("数组 a[i] 不是引用", 2, "数组 a[i] 不是引用", (), 0),
    ("重复 [1][1] 引用", 2, "重复 [1][1] 引用", (1,), 0),
])
def test_clean_citations(raw, n, text, cited, invalid):
    result = clean_citations(raw, n)
    assert (result.text, result.cited, result.invalid) == (text, cited, invalid)


def test_brackets_in_code_are_code_not_markers():
    """A quoted snippet keeps its brackets while streaming and after (they once became "[1][2] + [PAD] → [1][2]")."""
    raw = ("填充示例 [1]：\n```python\n[1,2,3] + [PAD] → [1,2,3,0]\nx = a[7]\n```\n行内 `b[1,2]` 不变，"
           "正文里的 [1,2] 是引用 [9]。")
    want = ("填充示例 [1]：\n```python\n[1,2,3] + [PAD] → [1,2,3,0]\nx = a[7]\n```\n行内 `b[1,2]` 不变，"
            "正文里的 [1][2] 是引用。")
    result = clean_citations(raw, 2)
    assert (result.text, result.cited, result.invalid) == (want, (1, 2), 1)
    f = CitationStreamFilter(2)
    shown = "".join(f.feed(raw[i:i + 3]) for i in range(0, len(raw), 3)) + f.flush()
    assert shown == want and f.invalid == 1
    assert repoint_citations(want, passages(2))[0] == want
    code = texts("示例代码如下，填充到这一批的最大长度为止。", "[1,2,3] + [PAD] → [1,2,3,0] 填充到这一批的最大长度")
    answer = "```python\n[1,2,3] + [PAD] → [1,2,3,0] 填充到这一批的最大长度\n```\n填充到这一批的最大长度为止。"
    assert align_citations(answer, code) == (answer.removesuffix("。") + " [1]。", 1)


def test_no_passages_means_every_marker_is_invalid():
    result = clean_citations("答案 [1]。", 0)
    assert result.text == "答案。" and result.invalid == 1


@pytest.mark.parametrize("raw, refused", [
    (REFUSAL, True),
    (REFUSAL + "。", True),
    ("“资料中没有相关信息”", True),
    ("抱歉，资料中没有相关信息。", True),
    ("LoRA 是低秩适配 [1]。", False),
    ("LoRA 是低秩适配 [1]。其他细节资料中没有相关信息。", False),
])
def test_is_refusal(raw, refused):
    assert is_refusal(raw) is refused


def test_stream_filter_never_shows_invalid_markers_split_across_deltas():
    f = CitationStreamFilter(2)
    raw = "答案 [1] 和 [3] 以及 【2】 结束 [未闭合"
    shown = "".join(f.feed(raw[i:i + 2]) for i in range(0, len(raw), 2)) + f.flush()
    # a dropped marker takes the space before it along, as in clean_citations: what streams is the final text
    assert shown == "答案 [1] 和 以及 [2] 结束 [未闭合" == clean_citations(raw, 2).text
    assert f.invalid == 1 and f.text == shown


# ---- re-pointing and alignment --------------------------------------------------------------------------------
def texts(*texts):
    return [ScoredChunk(Chunk(f"c{i}", "d", t, "s"), 1.0, "fused") for i, t in enumerate(texts)]


def test_align_adds_citation_to_the_supporting_passage():
    ps = texts("Adam 的默认 beta1 为 0.9。", "池化层没有可学习参数，能提供平移不变性。")
    text, added = align_citations("池化层没有可学习参数。它很有用！", ps)
    assert text == "池化层没有可学习参数 [2]。它很有用！"
    assert added == 1


def test_align_keeps_cited_sentences_and_line_breaks():
    ps = texts("池化层没有可学习参数。")
    text, added = align_citations("第一行 [1]。\n池化层没有可学习参数", ps)
    assert text == "第一行 [1]。\n池化层没有可学习参数 [1]" and added == 1
    assert align_citations("无关的句子内容在这里。", ps) == ("无关的句子内容在这里。", 0)
    assert align_citations("任何内容。", []) == ("任何内容。", 0)


ADAM, POOL = "Adam 的默认 beta1 为 0.9，beta2 为 0.999。", "池化层没有可学习参数，能提供平移不变性。"


def test_repoint_moves_a_citation_to_the_passage_that_holds_the_sentence():
    ps = texts(ADAM, POOL)
    assert repoint_citations("池化层没有可学习参数 [1]。", ps) == ("池化层没有可学习参数 [2]。", 1)
    # a marker after the full stop cites the sentence before it
    assert repoint_citations("池化层没有可学习参数。[1] Adam 的默认 beta1 为 0.9 [1]。", ps) == (
        "池化层没有可学习参数。[2] Adam 的默认 beta1 为 0.9 [1]。", 1)


def test_repoint_keeps_supported_and_two_source_citations():
    ps = texts(ADAM, POOL, "池化层常接在卷积层之后。")
    assert repoint_citations("池化层没有可学习参数 [2]。", ps) == ("池化层没有可学习参数 [2]。", 0)
    # half from each passage: neither citation falls far enough behind to move
    both = "Adam 的默认 beta1 为 0.9，池化层没有可学习参数 [1][2]。"
    assert repoint_citations(both, ps) == (both, 0)
    # nothing supports the sentence well: left as the model wrote it
    assert repoint_citations("这是一句与资料无关的话 [1]。", ps) == ("这是一句与资料无关的话 [1]。", 0)
    assert repoint_citations("池化层 [1]。", []) == ("池化层 [1]。", 0)


def test_repoint_writes_a_duplicated_marker_once():
    ps = texts(ADAM, POOL)
    assert repoint_citations("池化层没有可学习参数，能提供平移不变性 [1][2]。", ps) == (
        "池化层没有可学习参数，能提供平移不变性 [2]。", 1)


# ---- what a citation rests on -------------------------------------------------------------------------------
def test_claims_and_support_spans():
    claims = claims_by_citation("LoRA 只训练低秩矩阵 [1]。秩常取 8。[2] 其他 [1][2]")
    assert claims[1] == ["LoRA 只训练低秩矩阵 。", "其他"] and claims[2] == ["秩常取 8。", "其他"]
    assert cited_sentences("LoRA 只训练低秩矩阵 [1]。秩常取 8。[2] 其他 [1][2]") == [
        ("LoRA 只训练低秩矩阵 。", (1,)), ("秩常取 8。", (2,)), ("其他", (1, 2))]
    assert cited_sentences("没有引用。也没有") == [("没有引用。", ()), ("也没有", ())]
    assert cited_sentences("") == cited_sentences("[1]") == []  # a marker alone is no sentence
    text = "LoRA 冻结原权重，只训练低秩矩阵。秩 r 常取 8。"
    spans = support_spans(text, ["LoRA 只训练低秩矩阵"])
    assert [text[s:e] for s, e in spans][0] == "LoRA 冻结原权重，只训练低秩矩阵。"
    assert support_spans(text, []) == []
    assert support_spans("# LoRA 低秩矩阵\nLoRA 只训练低秩矩阵。", ["LoRA 只训练低秩矩阵"]) == [(12, 25)]  # not the heading


def test_says_back_is_a_copy_of_most_of_the_question():
    from ragbot.citations import says_back

    q = "注意力为什么要除以根号 d？"
    assert says_back(q, "注意力为什么要除以根号 d？") and says_back(q, "**注意力为什么要除以根号 d** 【1】！")
    assert says_back(q, "注意力为什么要除以根号d [1][2]\n")
    assert not says_back(q, "注意力为什么要除以根号 d：防止方差过大 [1]。")  # it goes on
    assert not says_back(q, "除以根号 d [1]。")  # under half of the question
    assert says_back(q, "除以根号 d", min_share=0.0) and not says_back(q, "根号 d", min_share=0.0)  # 4+ characters
    assert not says_back("Adam 和 SGD 哪个更常用？", "Adam [1]。")
    assert not says_back("", "") and not says_back("？", "？")
    assert says_back("正弦余弦位置编码公式是什么？", "正弦余弦位置编码公式是 [3]。[3]。[3")  # a marker cut off
