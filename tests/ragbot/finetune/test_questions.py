import random

import pytest

from ragbot.finetune import balance
from ragbot.finetune.questions import (DEFINE_TEMPLATES, QuestionWriter, StructureQuestions, SyntheticQA, combine,
                                       first_sentence, parse_question, plain, question_subject, quotable_sentences,
                                       term_forms, topic_of)
from ragbot.types import Chunk


def chunk(text, heading=(), cid="doc-0001", source="a.md"):
    return Chunk(cid, "doc", text, source, heading_path=tuple(heading))


def ask(c, **kw):
    return StructureQuestions(**kw).run([c])


def test_plain_removes_markdown_links_and_references():
    assert plain("* **张量 (Tensor):** `x` 见 [文档](https://a.b/c) (见 2.1.4)") == "张量 (Tensor): x 见 文档"
    assert plain("## 3.1 标题\n\n正文  有\n换行") == "3.1 标题 正文 有 换行"


def test_first_sentence_stops_at_the_end_of_the_first_sentence_or_a_clause():
    assert first_sentence("第一句。第二句。") == "第一句。"
    long = "甲" * 30 + "，" + "乙" * 100 + "。"
    assert first_sentence(long, max_chars=60) == "甲" * 30 + "。"
    assert first_sentence("短，" + "丙" * 100, max_chars=40) == ""  # no clause long enough to stand alone


def test_topic_and_term_forms():
    assert topic_of("3.1 预训练任务") == "预训练任务"
    assert topic_of("附录C：Hugging Face 生态") == "Hugging Face 生态"
    assert topic_of("1×1 卷积") == "1×1 卷积"  # a number that is not a heading number stays
    assert term_forms("Vector Database (向量数据库)") == ["Vector Database", "向量数据库", "向量数据库（Vector Database）"]
    assert term_forms("MLM（Masked Language Modeling，掩码语言建模）")[1] == "掩码语言建模"
    assert term_forms("梯度（Gradient）") == ["梯度", "梯度（Gradient）"]
    assert term_forms("LoRA") == ["LoRA"]


def test_definition_lines_become_definition_questions():
    c = chunk("* **张量 (Tensor):** 多维数组，是标量、向量、矩阵的推广。(见 2.1)\n"
              "* **Vector Database (向量数据库):**\n  专门用于存储和检索高维向量的数据库系统。\n"
              "* **支持多种 PEFT 方法:** 目前支持 LoRA。\n"
              "* **目的**：说明用途的标签。")
    pairs = ask(c)
    assert [p.method for p in pairs] == ["definition", "definition"]
    tensor, vdb = pairs
    assert tensor.subject in term_forms("张量 (Tensor)")
    assert tensor.question in {t.format(x=tensor.subject) for t in DEFINE_TEMPLATES}
    assert tensor.answer == f"{tensor.subject}指多维数组，是标量、向量、矩阵的推广。"
    assert vdb.answer.endswith("专门用于存储和检索高维向量的数据库系统。")  # the body on the next line
    assert ask(c) == pairs  # phrasings are fixed by the text, not random


def test_definition_phrasings_vary_across_chunks():
    chunks = [chunk("* **张量 (Tensor):** 多维数组，是标量、向量、矩阵的推广。", cid=f"doc-{i:04d}") for i in range(30)]
    assert len({qa.question for qa in StructureQuestions().run(chunks)}) > 3


def test_fields_under_a_heading_ask_about_the_heading():
    c = chunk("#### Layer Normalization（层归一化）\n\n**定义**：对每个样本的特征进行归一化。\n\n**公式**：\n```\n"
              "LN(x) = γ × (x - μ) / √(σ² + ε) + β\n# 注释行\n```\n\n**变体**：\n- **Pre-LN**：在之前归一化\n"
              "- **RMSNorm**：简化版\n  - 子项不算\n\n**代表**：BERT, RoBERTa\n",
              heading=("指南", "2.1 模型架构", "Layer Normalization（层归一化）"))
    pairs = {p.answer: p for p in ask(c, per_chunk=10) if p.method == "field"}
    name = next(iter(pairs.values())).subject
    assert name in term_forms("Layer Normalization（层归一化）")
    assert f"{name}指对每个样本的特征进行归一化。" in pairs
    assert "LN(x) = γ × (x - μ) / √(σ² + ε) + β。" in pairs
    assert "Pre-LN和RMSNorm。" in pairs
    assert "BERT, RoBERTa。" in pairs
    assert all(name in p.question for p in pairs.values())


def test_a_code_block_is_an_answer_only_to_a_formula_field():
    c = chunk("#### 主动学习\n\n**流程**：\n```python\ndef loop():\n    train()\n```\n", heading=("主动学习",))
    assert not [p for p in ask(c) if p.method == "field"]


def test_lists_under_a_caption_become_which_questions():
    c = chunk("#### 1.3 LLM的发展挑战\n\n尽管成功，仍面临挑战。以下是几个主要挑战：\n\n1. **计算资源需求**：需要大量算力。\n"
              "2. **数据隐私与安全**：要保护隐私。\n3. **模型解释性**：缺乏透明度。\n",
              heading=("LLM的发展挑战",))
    (lst,) = [p for p in ask(c) if p.method == "list"]
    assert lst.question.startswith("LLM的发展挑战的主要挑战")
    assert lst.answer == "LLM的发展挑战的主要挑战包括计算资源需求、数据隐私与安全和模型解释性。"


def test_sentences_and_sections():
    c = chunk("## 梯度裁剪\n\n梯度裁剪是一种防止梯度爆炸的技术，把梯度范数限制在阈值内。常用阈值为 1.0。它也很常用。",
              heading=("训练技巧", "梯度裁剪"))
    pairs = ask(c)
    sentences = [(p.question, p.answer) for p in pairs if p.method == "sentence"]
    definition = "梯度裁剪是一种防止梯度爆炸的技术，把梯度范数限制在阈值内。"
    # a short statement takes the next sentence along
    assert sentences[0][1] == definition + "常用阈值为 1.0。"
    assert sentences[0][0] in {"梯度裁剪是什么？", "什么是梯度裁剪？"}
    assert sentences[1] == ("梯度裁剪中，常用阈值是多少？", "常用阈值为 1.0。它也很常用。")  # a bare subject gets its context
    assert len(sentences) == 2  # "它也很常用" has no subject of its own
    (section,) = [p for p in pairs if p.method == "section"]
    assert section.answer == definition + "常用阈值为 1.0。它也很常用。" and "梯度裁剪" in section.question


def test_lead_adds_sentences_until_the_answer_says_enough():
    from ragbot.finetune.questions import lead

    assert lead("短句一。短句二。短句三。", max_chars=100, min_chars=6) == "短句一。短句二。"
    assert lead("短句一。" + "长" * 100 + "。", max_chars=60) == "短句一。"  # the next one would be too long
    assert lead("甲" * 70 + "。乙。") == "甲" * 70 + "。"  # long enough on its own


def test_code_comments_become_code_questions():
    c = chunk("```python\nd = torch.from_numpy(c)  # 共享内存\n```", heading=("B.1 张量",))
    (qa,) = ask(c)
    assert qa.method == "code" and "共享内存" in qa.question and qa.answer == "共享内存：d = torch.from_numpy(c)。"


def test_mostly_english_chunks_give_no_questions():
    assert ask(chunk("* **Tensor:** A multi-dimensional array, generalising scalars and vectors. " * 3)) == []


def test_at_most_per_chunk_pairs_from_one_chunk():
    text = "\n".join(f"* **Term{i} (术语{i}):** 第{i}个术语的定义内容。" for i in range(10))
    assert len(ask(chunk(text), per_chunk=3)) == 3


def test_question_subject():
    assert question_subject("什么是张量 (Tensor)？") == "张量 (Tensor)"
    assert question_subject("Adam 默认学习率是多少？") == "Adam 默认学习率"
    assert question_subject("为什么要缓存？") == ""
    for template in DEFINE_TEMPLATES:
        assert question_subject(template.format(x="张量")) == "张量", template


def _pair(q, a, cid, method="definition", subject=""):
    return SyntheticQA(q, a, cid, "a.md", method, subject)


def test_combine_makes_compound_and_comparison_questions():
    pairs = [_pair("什么是甲？", "甲是第一种方法。", "d-0001", subject="甲"),
             _pair("甲有什么优点？", "甲训练很快。", "d-0001", "field", "甲"),
             _pair("什么是乙？", "乙是第二种方法。", "d-0002", subject="乙"),
             _pair("什么是丙？", "丙是远处的方法。", "d-0040", subject="丙")]
    out = combine(pairs, random.Random(0), compound=5, comparisons=5)
    compound = [p for p in out if p.method == "compound"]
    comparison = [p for p in out if p.method == "comparison"]
    assert len(compound) == 1 and compound[0].chunk_id == "d-0001" and compound[0].also[0][1] == "d-0001"
    assert compound[0].question in {"什么是甲？甲有什么优点？", "甲有什么优点？什么是甲？"}
    (cmp,) = comparison  # 丙 is 38 chunks away from 乙: no comparison with it
    assert "甲" in cmp.question and "乙" in cmp.question
    assert (cmp.answer, cmp.chunk_id, cmp.also) == ("甲是第一种方法。", "d-0001", (("乙是第二种方法。", "d-0002"),))


@pytest.mark.parametrize("share", [0.3, 0.4, 0.5])
def test_balance_caps_the_share_of_any_method(share):
    sizes = {"definition": 300, "sentence": 60, "list": 40, "field": 50, "section": 30}
    pairs = [_pair(f"{m}{i}", "a", "c", m) for m, n in sizes.items() for i in range(n)]
    out = balance(pairs, random.Random(0), share)
    n_def = sum(p.method == "definition" for p in out)
    assert share * len(out) - 1 <= n_def <= share * len(out)  # as many as the share allows
    assert sum(p.method != "definition" for p in out) == 180  # the small methods keep every pair
    assert len({p.question for p in out}) == len(out)


def test_balance_keeps_everything_when_no_cap_can_meet_the_share():
    pairs = [_pair(f"d{i}", "a", "c") for i in range(10)] + [_pair("s", "a", "c", "sentence")]
    assert balance(pairs, random.Random(0), 0.4) == pairs  # two methods cannot both stay under 40%


GOLD = chunk("LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B，秩 r 常取 8。", cid="lora-0001")
OTHER = chunk("卷积网络用局部连接和权重共享。", cid="cnn-0001")


@pytest.mark.parametrize("output", ["问题：甲是什么？", "**问题1：** 甲是什么？\n答案：甲是乙。", "甲是什么？还有吗？",
                                    "好的，问题如下。\n甲是什么？"])
def test_parse_question_takes_the_first_question_however_it_is_labelled(output):
    assert parse_question(output) == "甲是什么？"


def test_parse_question_without_a_question_mark_is_none():
    assert parse_question("甲是乙。") is None and parse_question("") is None


def test_quotable_sentences_are_prose_without_markup_headings_or_code():
    text = "## LoRA 原理\n**LoRA** 冻结预训练权重，只训练低秩矩阵 A 和 B。\n| 秩 | 显存 |\n`lora_r = 8` 是常见设置。\n短句。\nLoRA 为什么省显存？"
    assert quotable_sentences(text) == ["LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B。"]


def test_question_writer_asks_about_a_sentence_and_keeps_it_as_the_answer():
    outputs = iter(["问题：LoRA 训练哪些矩阵？", "根据资料，秩取多少？", "我不知道。", "池化层把特征图缩小一半吗？"])
    asked = []

    def generate_batch(conversations, max_new_tokens=None):
        asked.extend(conversations)
        return [next(outputs) for _ in conversations]

    gold = chunk("LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B。\n秩 r 常取 8，再大收益就很小了。", cid="lora-0001")
    other = chunk("卷积网络用局部连接和权重共享，参数因此少得多。\n池化层把特征图缩小一半。", cid="cnn-0001")
    pairs, rejected = QuestionWriter(generate_batch, per_chunk=2, batch_size=3).run([gold, other])
    assert [(p.question, p.answer, p.method) for p in pairs] == [
        ("LoRA 训练哪些矩阵？", "LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B。", "llm")]
    assert rejected == {"question_meta": 1, "unparseable": 1, "question_restates_answer": 1}
    assert "句子：LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B。" in asked[0][-1]["content"] and len(asked) == 4


def test_balance_never_caps_an_uncapped_method_but_counts_it():
    sizes = {"definition": 500, "sentence": 60, "llm": 400}
    pairs = [_pair(f"{m}{i}", "a", "c", m) for m, n in sizes.items() for i in range(n)]
    out = balance(pairs, random.Random(0), 0.4, uncapped=("llm",))
    counts = {m: sum(p.method == m for p in out) for m in sizes}
    assert counts["llm"] == 400 and counts["sentence"] == 60
    assert counts["definition"] <= 0.4 * len(out) < counts["definition"] + 1  # as many as the share allows
    assert sum(p.method == "llm" for p in balance(pairs, random.Random(0), 0.4)) < 400  # capped, they would lose some
