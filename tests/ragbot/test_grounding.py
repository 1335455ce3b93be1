from ragbot.grounding import KeyTermGate, align_citations, key_terms
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
