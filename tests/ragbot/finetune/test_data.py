import re
from dataclasses import replace

import pytest

from ragbot.finetune.data import (ExampleBuilder, char_ngrams, cite, cite_parts, jaccard, near_duplicates, quotable,
                                  quote_answer, subjects, trim_clauses)
from ragbot.finetune.questions import SyntheticQA, acceptable, support
from ragbot.finetune.train import TrainConfig, _split, encode_example
from ragbot.errors import ConfigError
from ragbot.settings import REFUSAL
from ragbot.types import Chunk, ScoredChunk

GOLD = Chunk("gold", "d", "LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B，秩 r 常取 8。", "lora.md")
OTHERS = [Chunk(f"o{i}", "d", f"第{i}段无关内容，讲的是卷积网络的第{i}个细节。", "cnn.md") for i in range(10)]
CHUNKS = {c.id: c for c in [GOLD, *OTHERS]}
PAIR = SyntheticQA("LoRA 训练哪些矩阵？", "只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm")


def retrieve(question, k):
    return [ScoredChunk(c, 1.0, "fused") for c in [GOLD, *OTHERS][:k]]


def passage_texts(user_message):
    return re.findall(r"^\[(\d+)\]（[^）]*）\n(.*)$", user_message, re.M)


@pytest.mark.parametrize("seed", range(8))
def test_gold_passage_number_is_right_after_shuffling(seed):
    examples = ExampleBuilder(retrieve, CHUNKS, n_passages=4, refusal_ratio=0.0, positions="random", seed=seed).run([PAIR])
    (ex,) = examples
    passages = dict(passage_texts(ex.messages[-1]["content"]))
    assert len(passages) == 4
    assert passages[str(ex.gold_position)] == GOLD.text
    assert ex.target == f"只训练低秩矩阵 A 和 B [{ex.gold_position}]。"


def test_gold_positions_vary_across_examples():
    pairs = [SyntheticQA(f"LoRA 问题{i}？", "只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm") for i in range(40)]
    positions = {e.gold_position for e in ExampleBuilder(retrieve, CHUNKS, n_passages=4, refusal_ratio=0.0,
                                                         positions="random").run(pairs)}
    assert positions == {1, 2, 3, 4}


@pytest.mark.parametrize("rank", [0, 2, 3])
def test_retrieved_positions_keep_the_gold_where_retrieval_ranks_it(rank):
    def ranked(question, k):
        order = [*OTHERS[:rank], GOLD, *OTHERS[rank:]]
        return [ScoredChunk(c, 1.0, "fused") for c in order[:k]]

    examples = ExampleBuilder(ranked, CHUNKS, n_passages=4, refusal_ratio=0.0, seed=3).run([PAIR] * 5)
    assert {e.gold_position for e in examples} == {rank + 1}
    passages = [text for _, text in passage_texts(examples[0].messages[-1]["content"])]
    assert passages == [c.text for c in [*OTHERS[:rank], GOLD, *OTHERS[rank:]][:4]]  # retrieval order kept


def test_a_gold_chunk_retrieval_misses_goes_to_a_random_place():
    def misses(question, k):
        return [ScoredChunk(c, 1.0, "fused") for c in OTHERS[:k]]

    pairs = [SyntheticQA(f"LoRA 问题{i}？", "只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm") for i in range(40)]
    positions = {e.gold_position for e in ExampleBuilder(misses, CHUNKS, n_passages=4, refusal_ratio=0.0).run(pairs)}
    assert positions == {1, 2, 3, 4}
    with pytest.raises(ConfigError, match="positions"):
        ExampleBuilder(misses, CHUNKS, positions="first")


def test_refusal_examples_withhold_gold_and_cite_nothing():
    examples = ExampleBuilder(retrieve, CHUNKS, n_passages=4, refusal_ratio=1.0, seed=1).run([PAIR])
    refusal = [e for e in examples if e.kind == "refusal"]
    assert len(refusal) == 1
    assert refusal[0].target == REFUSAL and refusal[0].gold_position is None
    assert GOLD.text not in refusal[0].messages[-1]["content"]
    assert not re.search(r"\[\d+\]", refusal[0].target)


def _examples_with_second_hit(extra: Chunk):
    """Examples for PAIR when retrieval ranks ``extra`` right after the gold chunk (refusal for every pair)."""

    def retrieve(q, k):
        return [ScoredChunk(c, 1.0, "fused") for c in [GOLD, extra, *OTHERS][:k]]

    return ExampleBuilder(retrieve, {**CHUNKS, extra.id: extra}, n_passages=4, refusal_ratio=1.0).run([PAIR])


def test_distractors_that_also_answer_are_not_used():
    copy = Chunk("copy", "d", "重复：只训练低秩矩阵 A 和 B。", "dup.md")
    examples = _examples_with_second_hit(copy)
    assert all(copy.text not in e.messages[-1]["content"] for e in examples)


def test_cite_inserts_marker_before_final_punctuation():
    assert cite("答案是 8。", 2) == "答案是 8 [2]。"
    assert cite("答案是 8", 3) == "答案是 8 [3]。"
    assert cite("已有 [1] 标注。", 2) == "已有 标注 [2]。"


def test_near_duplicate_filter():
    held = ["LoRA 微调时训练哪些矩阵？", "什么是 KV Cache？"]
    generated = ["LoRA 微调时训练哪些矩阵？", "LoRA 微调时训练哪些矩阵呢？", "卷积层的参数量怎么算？"]
    found = near_duplicates(generated, held)
    assert set(found) == {0, 1}
    assert found[0] == ("LoRA 微调时训练哪些矩阵？", 1.0)
    assert jaccard(char_ngrams("abcdef"), char_ngrams("abcdef")) == 1.0
    assert jaccard(char_ngrams("abcdefg"), char_ngrams("uvwxyz1")) == 0.0


class CharTokenizer:
    """One id per character; a chat template like Qwen's, enough to test masking."""

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>\n" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_loss_mask_covers_only_answer_tokens():
    messages = [{"role": "system", "content": "规则"}, {"role": "user", "content": "资料与问题"}]
    ex = encode_example(CharTokenizer(), messages, "答案 [1]。", max_length=1000)
    labelled = "".join(chr(t) for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100)
    assert labelled == "答案 [1]。<|end|>"
    assert all(lab == -100 for lab in ex["labels"][: len(ex["labels"]) - len(labelled)])
    assert encode_example(CharTokenizer(), messages, "答案", max_length=10) is None


def test_split_keeps_a_question_on_one_side():
    rows = [{"question": f"q{i % 10}", "kind": k} for i in range(20) for k in ("answer",)]
    train, val = _split(rows, 0.2, seed=0)
    assert {r["question"] for r in train}.isdisjoint({r["question"] for r in val})
    assert len({r["question"] for r in val}) == 2


def test_train_config_validation():
    with pytest.raises(ConfigError, match=r"learning_rate \(2.0\)"):
        TrainConfig(learning_rate=2.0)


def test_parse_and_filter_generated_pairs():
    text = GOLD.text
    assert acceptable("LoRA 训练哪些矩阵？", "只训练低秩矩阵 A 和 B。", text) is None
    assert acceptable("LoRA 训练哪些矩阵？", "训练全部参数并使用更大的学习率。", text) == "answer_unsupported"
    assert acceptable("根据资料，LoRA 训练哪些矩阵？", "低秩矩阵 A 和 B。", text) == "question_meta"
    assert acceptable("LoRA 训练哪些矩阵", "低秩矩阵 A 和 B。", text) == "question_form"
    assert support("低秩矩阵", text) == 1.0


def test_refusal_is_skipped_when_a_distractor_mentions_the_subject():
    other = Chunk("other", "d", "LoRA 的另一种说法：低秩适配。", "glossary.md")
    refusals = [e for e in _examples_with_second_hit(other) if e.kind == "refusal"]
    assert all("LoRA" not in e.messages[-1]["content"].split("问题：")[0] for e in refusals)


def test_subjects_name_the_term_in_every_form():
    pair = SyntheticQA("Vector Database有什么作用？", "存储向量。", "c", "a.md", "field", "向量数据库（Vector Database）")
    assert set(subjects(pair)) >= {"向量数据库（vectordatabase）", "向量数据库", "vectordatabase"}
    template = SyntheticQA("什么是张量 (Tensor)？", "多维数组。", "c", "a.md", "llm")
    assert "张量" in subjects(template) and "tensor" in subjects(template)


def test_window_keeps_the_answer_of_a_long_gold_chunk():
    long_gold = Chunk("gold", "d", "无关的开头。" * 40 + "LoRA 只训练低秩矩阵 A 和 B。" + "无关的结尾。" * 40, "lora.md")
    chunks = {**CHUNKS, "gold": long_gold}
    pair = SyntheticQA("LoRA 训练哪些矩阵？", "LoRA 只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm")
    (ex,) = ExampleBuilder(retrieve, chunks, n_passages=3, refusal_ratio=0.0, max_passage_chars=100).run([pair])
    passages = dict(passage_texts(ex.messages[-1]["content"]))
    gold_text = passages[str(ex.gold_position)]
    assert "LoRA 只训练低秩矩阵 A 和 B。" in gold_text and len(gold_text) == 100
    assert all(len(t) <= 102 for t in passages.values())  # 100 characters, "…" where a window cuts the text


def test_short_gold_chunks_are_shown_whole():
    (ex,) = ExampleBuilder(retrieve, CHUNKS, n_passages=3, refusal_ratio=0.0, max_passage_chars=300).run([PAIR])
    assert dict(passage_texts(ex.messages[-1]["content"]))[str(ex.gold_position)] == GOLD.text


SECOND = Chunk("second", "d", "QLoRA 把基础模型量化为 4 位 NF4，再在其上训练 LoRA。", "qlora.md")


@pytest.mark.parametrize("seed", range(6))
def test_two_part_answers_cite_each_gold_passage_where_it_stands(seed):
    def retrieve2(question, k):
        return [ScoredChunk(c, 1.0, "fused") for c in [GOLD, SECOND, *OTHERS][:k]]

    pair = SyntheticQA("LoRA 和 QLoRA 有什么区别？", "LoRA 只训练低秩矩阵 A 和 B。", "gold", "lora.md", "comparison",
                       "LoRA", (("QLoRA 把基础模型量化为 4 位 NF4。", "second"),))
    (ex,) = ExampleBuilder(retrieve2, {**CHUNKS, "second": SECOND}, n_passages=4, refusal_ratio=1.0, positions="random",
                           seed=seed).run([pair])
    passages = {text: int(n) for n, text in passage_texts(ex.messages[-1]["content"])}
    i, j = passages[GOLD.text], passages[SECOND.text]
    assert len(passages) == 4 and i != j and ex.gold_position == i
    # each part quotes its own passage (the whole sentence: no clause of it is unrelated to the answer)
    assert ex.target == f"LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B [{i}]；QLoRA 把基础模型量化为 4 位 NF4，再在其上训练 LoRA [{j}]。"


def test_cite_parts_joins_cited_statements():
    assert cite_parts([("甲。", 1)]) == "甲 [1]。"
    assert cite_parts([("甲。", 1), ("乙", 3), ("丙！", 2)]) == "甲 [1]；乙 [3]；丙 [2]！"


# ---- quote-and-cite targets -----------------------------------------------------------------------------------

MARKDOWN = ("## 1.2 LoRA\n\n* 在 `Transformer` 微调中，**LoRA** 冻结预训练权重，只训练低秩矩阵 A 和 B，"
            "详见[论文](https://arxiv.org/abs/2106.09685)。\n1. 秩 r 常取 8 [3]。\n")


def test_quote_is_verbatim_in_the_stripped_passage_and_trimmed_to_what_answers():
    (quote,) = quote_answer(MARKDOWN, "LoRA 只训练低秩矩阵 A 和 B。", "LoRA 训练哪些矩阵？")
    assert quote in quotable(MARKDOWN)
    assert quote == "LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B"  # "在 Transformer 微调中" and "详见论文" answer nothing
    assert not re.search(r"\*\*|`|\]\(|^[#*\d]", quote)
    (rank,) = quote_answer(MARKDOWN, "秩 r 常取 8。")
    assert rank == "秩 r 常取 8。" and "[3]" not in rank  # the source's own reference marker is not quoted
    assert quote_answer(MARKDOWN, "Adam 的默认 beta1 为 0.9。") is None


def test_a_list_answer_quotes_each_item_and_a_short_trim_keeps_the_sentence():
    passage = "常见的挑战：\n- **算力**：训练需要大量显卡。\n- **隐私**：数据可能泄露。\n- **其他**：略。"
    quotes = quote_answer(passage, "挑战包括训练需要大量显卡和数据可能泄露。", "有哪些挑战？")
    # in passage order, each verbatim; "算力：" shares nothing with the answer, but "数据可能泄露。" alone would be too short
    assert quotes == ["训练需要大量显卡。", "隐私：数据可能泄露。"]
    assert trim_clauses("甲乙：丙丁戊己。", "丙丁戊己") == "甲乙：丙丁戊己。"  # trimmed it would be under 8 characters


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_the_marker_names_the_gold_passage_where_it_stands(rank):
    def ranked(question, k):
        order = [*OTHERS[:rank], GOLD, *OTHERS[rank:]]
        return [ScoredChunk(c, 1.0, "fused") for c in order[:k]]

    (ex,) = ExampleBuilder(ranked, CHUNKS, n_passages=4, refusal_ratio=0.0).run([PAIR])
    passages = dict(passage_texts(ex.messages[-1]["content"]))
    assert ex.gold_position == rank + 1 and passages[str(rank + 1)] == GOLD.text
    (quoted,) = re.findall(r"(.+?) \[(\d+)\]。$", ex.target)
    assert quoted == ("只训练低秩矩阵 A 和 B", str(rank + 1))
    assert quoted[0] in quotable(passages[str(rank + 1)])


def test_a_pair_no_sentence_quotes_is_dropped_and_counted():
    pair = SyntheticQA("LoRA 训练哪些矩阵？", "训练全部参数并使用更大的学习率。", "gold", "lora.md", "llm")
    builder = ExampleBuilder(retrieve, CHUNKS, n_passages=4, refusal_ratio=1.0)
    assert builder.run([pair]) == [] and builder.stats == {"quote_not_found": 1}


def test_the_quote_comes_from_the_window_the_prompt_shows():
    # a long gold chunk: the answer sits where the question's own window would not reach; the example shows it
    long_gold = Chunk("gold", "d", "LoRA 的背景介绍。" * 30 + "它只训练低秩矩阵 A 和 B。" + "无关的结尾。" * 30, "lora.md")
    pair = SyntheticQA("LoRA 训练哪些矩阵？", "只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm")
    (ex,) = ExampleBuilder(retrieve, {**CHUNKS, "gold": long_gold}, n_passages=3, refusal_ratio=0.0,
                           max_passage_chars=100).run([pair])
    shown = dict(passage_texts(ex.messages[-1]["content"]))[str(ex.gold_position)]
    assert ex.target == f"它只训练低秩矩阵 A 和 B [{ex.gold_position}]。" and "它只训练低秩矩阵 A 和 B" in shown


def test_refusals_cite_nothing_and_no_passage_holds_the_answer():
    pairs = [SyntheticQA(f"LoRA 问题{i}？", "只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm", "LoRA") for i in range(6)]
    refusals = [e for e in ExampleBuilder(retrieve, CHUNKS, n_passages=4, refusal_ratio=1.0).run(pairs)
                if e.kind == "refusal"]
    assert len(refusals) == 6
    for e in refusals:
        texts = [t for _, t in passage_texts(e.messages[-1]["content"])]
        assert e.target == REFUSAL and len(texts) == 4
        assert all(support("只训练低秩矩阵 A 和 B", t) < 0.6 and "LoRA" not in t for t in texts)


def test_skipped_refusals_are_made_up_by_later_questions():
    """A refusal drawn for a question whose distractors name its subject is made by the next question instead."""
    mentions = [Chunk(f"m{i}", "m", f"QLoRA 的第{i}个细节，与量化有关。", "q.md") for i in range(5)]
    chunks = {**CHUNKS, **{c.id: c for c in mentions}}

    def retrieve_by_subject(question, k):
        hits = [GOLD, *(mentions if "QLoRA" in question else OTHERS)]
        return [ScoredChunk(c, 1.0, "fused") for c in hits[:k]]

    second = SyntheticQA("LoRA 训练哪些矩阵？", "只训练低秩矩阵 A 和 B。", "gold", "lora.md", "llm", "LoRA")
    first = replace(second, question="QLoRA 和 LoRA 训练哪些矩阵？", subject="QLoRA")
    builder = ExampleBuilder(retrieve_by_subject, chunks, n_passages=4, refusal_ratio=0.5, seed=1)  # due, not due
    kinds = [(e.question, e.kind) for e in builder.run([first, second])]
    assert builder.stats["refusal_skipped_topic_present"] == 1
    assert kinds == [(first.question, "answer"), (second.question, "answer"), (second.question, "refusal")]


def test_two_part_question_cites_two_different_markers():
    def retrieve2(question, k):
        return [ScoredChunk(c, 1.0, "fused") for c in [OTHERS[0], SECOND, GOLD, *OTHERS[1:]][:k]]

    pair = SyntheticQA("LoRA 和 QLoRA 有什么区别？", "LoRA 只训练低秩矩阵 A 和 B。", "gold", "lora.md", "comparison",
                       "LoRA", (("QLoRA 把基础模型量化为 4 位 NF4。", "second"),))
    (ex,) = ExampleBuilder(retrieve2, {**CHUNKS, "second": SECOND}, n_passages=4, refusal_ratio=1.0).run([pair])
    assert re.findall(r"\[(\d+)\]", ex.target) == ["3", "2"] and ex.gold_position == 3


# ---- which questions and passages ------------------------------------------------------------------------------

def test_require_retrieved_drops_a_question_whose_chunk_retrieval_misses():
    def gold_at(rank):
        def ranked(question, k):
            return [ScoredChunk(c, 1.0, "fused") for c in [*OTHERS[:rank], GOLD, *OTHERS[rank:]][:k]]
        return ranked

    kept = ExampleBuilder(gold_at(3), CHUNKS, n_passages=4, refusal_ratio=0.0, require_retrieved=True)
    assert [e.gold_position for e in kept.run([PAIR])] == [4]
    missed = ExampleBuilder(gold_at(4), CHUNKS, n_passages=4, refusal_ratio=1.0, require_retrieved=True)
    assert missed.run([PAIR]) == [] and missed.stats == {"not_retrievable": 1}


ELSEWHERE = [Chunk(f"e{i}", f"doc{i}", f"第{i}篇文档讲卷积网络的第{i}个细节。", f"e{i}.md") for i in range(8)]
SIBLINGS = [Chunk("lora-0002", "lora", "LoRA 的缩放系数 alpha 常设为秩的两倍。", "lora.md", heading_path=("LoRA",)),
            Chunk("lora-0009", "lora", "LoRA 适配器可以合并回原权重，推理时不增加延迟。", "lora.md", heading_path=("附录",))]
LORA_GOLD = Chunk("lora-0001", "lora", GOLD.text, "lora.md", heading_path=("LoRA",))
LORA_PAIR = replace(PAIR, chunk_id="lora-0001")


def test_a_hard_distractor_from_the_gold_document_is_shown():
    chunks = {c.id: c for c in [LORA_GOLD, *SIBLINGS, *ELSEWHERE]}

    def retrieve_far(question, k):  # the sibling only at rank 7: below the passages shown
        return [ScoredChunk(c, 1.0, "fused") for c in [LORA_GOLD, *ELSEWHERE[:5], SIBLINGS[1], *ELSEWHERE[5:]][:k]]

    def retrieve_none(question, k):  # no sibling retrieved at all: the nearest one of the document, same section first
        return [ScoredChunk(c, 1.0, "fused") for c in [LORA_GOLD, *ELSEWHERE][:k]]

    for fn, sibling in ((retrieve_far, SIBLINGS[1]), (retrieve_none, SIBLINGS[0])):
        builder = ExampleBuilder(fn, chunks, n_passages=4, refusal_ratio=0.0)
        (ex,) = builder.run([LORA_PAIR])
        texts = [t for _, t in passage_texts(ex.messages[-1]["content"])]
        assert texts == [LORA_GOLD.text, ELSEWHERE[0].text, ELSEWHERE[1].text, sibling.text]  # in the last place
        assert builder.stats["hard_distractor_added"] == 1


def test_a_sibling_that_answers_is_no_distractor():
    answering = Chunk("lora-0003", "lora", "LoRA 只训练低秩矩阵 A 和 B。", "lora.md", heading_path=("LoRA",))
    chunks = {c.id: c for c in [LORA_GOLD, answering, *ELSEWHERE]}
    builder = ExampleBuilder(lambda q, k: [ScoredChunk(c, 1.0, "fused") for c in [LORA_GOLD, *ELSEWHERE][:k]], chunks,
                             n_passages=4, refusal_ratio=0.0)
    (ex,) = builder.run([LORA_PAIR])
    assert answering.text not in ex.messages[-1]["content"] and "hard_distractor_added" not in builder.stats

