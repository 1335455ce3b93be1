from ragbot.grounding import KeyTermGate, key_terms


def test_key_terms_are_latin_words_of_two_or_more_chars():
    assert key_terms("RWKV 和 Self-RAG 比 GPT-4 好吗？x 是 FP8") == ["RWKV", "Self-RAG", "GPT-4", "FP8"]


def test_gate_refuses_terms_absent_from_the_knowledge_base():
    gate = KeyTermGate(["Flash Attention 通过分块计算减少显存访问。", "LoRA 训练低秩矩阵。"])
    assert gate.run("RWKV 是什么？").missing_terms == ("RWKV",)
    assert gate.run("RWKV 是什么？").refuse
    assert not gate.run("FlashAttention 怎么减少显存？").refuse  # spaces and case do not matter
    assert not gate.run("lora 的秩怎么选？").refuse
    assert not gate.run("什么是注意力机制？").refuse  # no key terms: the LLM decides
