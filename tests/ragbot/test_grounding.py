from ragbot.grounding import KeyTermGate, align_citations, key_terms, repoint_citations
from ragbot.types import Chunk, ScoredChunk


def test_key_terms_are_latin_words_of_two_or_more_chars():
    assert key_terms("RWKV 和 Self-RAG 比 GPT-4 好吗？x 是 FP8") == ["RWKV", "Self-RAG", "GPT-4", "FP8"]


def test_gate_refuses_terms_absent_from_the_knowledge_base():
    gate = KeyTermGate(["Flash Attention 通过分块计算减少显存访问。", "LoRA 训练低秩矩阵。"])
    assert gate.run("RWKV 是什么？").missing_terms == ("RWKV",)
    assert gate.run("RWKV 是什么？").refuse
    assert not gate.run("FlashAttention 怎么减少显存？").refuse  # spaces and case do not matter
    assert not gate.run("lora 的秩怎么选？").refuse
    assert not gate.run("什么是注意力机制？").refuse  # no key terms: the LLM decides


def passages(*texts):
    return [ScoredChunk(Chunk(f"c{i}", "d", t, "s"), 1.0, "fused") for i, t in enumerate(texts)]


def test_align_adds_citation_to_the_supporting_passage():
    ps = passages("Adam 的默认 beta1 为 0.9。", "池化层没有可学习参数，能提供平移不变性。")
    text, added = align_citations("池化层没有可学习参数。它很有用！", ps)
    assert text == "池化层没有可学习参数 [2]。它很有用！"
    assert added == 1


def test_align_keeps_cited_sentences_and_line_breaks():
    ps = passages("池化层没有可学习参数。")
    text, added = align_citations("第一行 [1]。\n池化层没有可学习参数", ps)
    assert text == "第一行 [1]。\n池化层没有可学习参数 [1]" and added == 1
    assert align_citations("无关的句子内容在这里。", ps) == ("无关的句子内容在这里。", 0)
    assert align_citations("任何内容。", []) == ("任何内容。", 0)


ADAM, POOL = "Adam 的默认 beta1 为 0.9，beta2 为 0.999。", "池化层没有可学习参数，能提供平移不变性。"


def test_repoint_moves_a_citation_to_the_passage_that_holds_the_sentence():
    ps = passages(ADAM, POOL)
    assert repoint_citations("池化层没有可学习参数 [1]。", ps) == ("池化层没有可学习参数 [2]。", 1)
    # a marker after the full stop cites the sentence before it
    assert repoint_citations("池化层没有可学习参数。[1] Adam 的默认 beta1 为 0.9 [1]。", ps) == (
        "池化层没有可学习参数。[2] Adam 的默认 beta1 为 0.9 [1]。", 1)


def test_repoint_keeps_supported_and_two_source_citations():
    ps = passages(ADAM, POOL, "池化层常接在卷积层之后。")
    assert repoint_citations("池化层没有可学习参数 [2]。", ps) == ("池化层没有可学习参数 [2]。", 0)
    # half from each passage: neither citation falls far enough behind to move
    both = "Adam 的默认 beta1 为 0.9，池化层没有可学习参数 [1][2]。"
    assert repoint_citations(both, ps) == (both, 0)
    # nothing supports the sentence well: left as the model wrote it
    assert repoint_citations("这是一句与资料无关的话 [1]。", ps) == ("这是一句与资料无关的话 [1]。", 0)
    assert repoint_citations("池化层 [1]。", []) == ("池化层 [1]。", 0)


def test_repoint_writes_a_duplicated_marker_once():
    ps = passages(ADAM, POOL)
    assert repoint_citations("池化层没有可学习参数，能提供平移不变性 [1][2]。", ps) == (
        "池化层没有可学习参数，能提供平移不变性 [2]。", 1)
