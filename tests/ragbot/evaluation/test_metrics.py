import pytest
from ragbot.evaluation.metrics import (
    CitationRecord,
    char_tokens,
    citation_metrics,
    contains_evidence,
    first_hit_rank,
    hit_at_k,
    mrr,
    normalize_ws,
    percentiles,
    refusal_metrics,
    rouge_l,
    rouge_n,
    rouge_scores,
    supported_sentences,
    word_tokens,
)
from ragbot.settings import REFUSAL
from ragbot.types import Answer, Chunk, Citation

# (reference, hypothesis): Chinese, mixed, punctuation, full-width, repeats, identical, disjoint.
PAIRS = [
    ("我爱机器学习", "我爱深度学习"),
    ("LoRA 冻结预训练权重，只训练两个低秩矩阵 A 和 B。", "LoRA 只训练低秩矩阵 A、B，预训练权重保持冻结。"),
    ("ＬｏＲＡ 的秩 r＝８", "LoRA的秩r=8"),
    ("批大小为１２８，学习率为３e-４。", "批大小 128，学习率 3e-4"),
    ("Adam 优化器结合动量与自适应学习率，默认 beta1 为 0.9。", "Adam 默认 beta1=0.9，结合了动量和自适应学习率！"),
    ("注意力机制（Attention）让模型关注重要的词。", "注意力机制让模型关注重要的词"),
    ("哈哈哈哈，学学学习", "哈哈，学习学习学习"),
    ("梯度消失", "梯度消失"),
    ("梯度消失", "量子色动力学"),
    ("Transformer 使用多头自注意力和位置编码。", "transformer 用 multi-head self-attention 和位置编码"),
    ("BM25 是一种基于词频和逆文档频率的稀疏检索打分函数。", "BM25 是稀疏检索方法，基于词频（TF）与逆文档频率（IDF）打分。"),
    ("ReLU 激活函数把负数置零，计算简单，缓解梯度消失。", "ReLU 把负数变成 0，能缓解梯度消失问题；计算也很简单。"),
    ("大语言模型的微调需要大量显存。", "微调大语言模型需要很多显存，也可以用 QLoRA 节省显存。"),
    ("资料中没有相关信息", "资料中没有相关信息。"),
    ("温度为 0 时是贪心解码。", "贪心解码对应温度 0；温度越高，输出越随机。"),
    ("“检索增强生成”即 RAG：先检索，再生成。", "RAG（检索增强生成）先检索相关段落，然后生成答案"),
    ("模型 模型 模型 数据", "数据 模型"),
]


class _Tok:
    def __init__(self, fn):
        self.tokenize = fn


@pytest.fixture(scope="module")
def RougeScorer():
    """Imported here, not at the top: rouge-score pulls in nltk, which takes seconds to import."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer


@pytest.mark.parametrize("tokenize,view", [(char_tokens, "char"), (word_tokens, "word")])
@pytest.mark.parametrize("ref,hyp", PAIRS)
def test_rouge_matches_rouge_score_and_rouge_chinese(ref, hyp, tokenize, view, RougeScorer):
    from rouge_chinese import Rouge

    ours = rouge_scores(ref, hyp)
    theirs = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Tok(tokenize)).score(ref, hyp)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert ours[f"{name}_{view}"] == pytest.approx(theirs[name].fmeasure, abs=1e-6)
    # rouge-chinese takes space-separated tokens; exclusive=False counts repeated n-grams like rouge-score.
    zh = Rouge(exclusive=False).get_scores(" ".join(tokenize(hyp)), " ".join(tokenize(ref)))[0]
    for name, key in (("rouge1", "rouge-1"), ("rouge2", "rouge-2"), ("rougeL", "rouge-l")):
        assert ours[f"{name}_{view}"] == pytest.approx(zh[key]["f"], abs=1e-6)


def test_rouge_hand_computed_chinese_case():
    ref, hyp = char_tokens("我爱机器学习"), char_tokens("我爱深度学习")
    assert rouge_n(ref, hyp, 1).f1 == pytest.approx(4 / 6)
    assert rouge_n(ref, hyp, 2).f1 == pytest.approx(2 / 5)  # 我爱, 学习
    assert rouge_l(ref, hyp).f1 == pytest.approx(4 / 6)  # 我爱学习


def test_rouge_precision_recall_and_clipped_repeats():
    s = rouge_n(["模", "模", "模", "型"], ["模", "型"], 1)
    assert (s.precision, s.recall) == (1.0, 0.5)
    assert s.f1 == pytest.approx(2 / 3)
    assert rouge_l(["a", "b", "c", "d"], ["b", "d", "x"]).recall == pytest.approx(0.5)


def test_rouge_identical_disjoint_empty():
    assert set(rouge_scores("LoRA 的秩为 8。", "ＬｏＲＡ的秩为８")).issuperset({"rouge1_char", "rougeL_word"})
    assert all(v == pytest.approx(1.0) for v in rouge_scores("LoRA 的秩为 8。", "ＬｏＲＡ的秩为８").values())
    assert all(v == 0.0 for v in rouge_scores("梯度消失", "量子色动力学").values())
    assert all(v == 0.0 for v in rouge_scores("梯度消失", "").values())
    assert all(v == 0.0 for v in rouge_scores("梯度消失", "。！？").values())
    assert all(v == 0.0 for v in rouge_scores("", "梯度消失").values())
    with pytest.raises(ValueError, match="n \\(0\\)"):
        rouge_n(["a"], ["a"], 0)


def test_char_tokens_keep_cjk_and_fold_width_and_case():
    assert char_tokens("LoRA 的秩 r=8") == ["lora", "的", "秩", "r", "8"]
    assert char_tokens("ＬｏＲＡ　的秩，ｒ＝８！") == ["lora", "的", "秩", "r", "8"]
    assert char_tokens("（注意力）“机制”：beta1=0.9；max_new_tokens…") == [
        "注", "意", "力", "机", "制", "beta1", "0", "9", "max", "new", "tokens"]
    assert char_tokens(" \n\t，。") == []


def test_word_tokens_are_jieba_words_without_punctuation():
    assert word_tokens("大语言模型（LLM）的微调，Adam！") == ["大", "语言", "模型", "llm", "的", "微调", "adam"]
    assert word_tokens("ＬｏＲＡ 的秩") == word_tokens("LoRA 的秩")
    assert word_tokens("。，  \n") == []


def test_normalize_ws_removes_whitespace_and_folds_width():
    assert normalize_ws(" LoRA　冻结\n预训练\t权重 ") == "LoRA冻结预训练权重"
    assert normalize_ws("ｒ＝８") == "r=8"


def test_contains_evidence_ignores_whitespace_and_width_but_not_case():
    chunk = "LoRA 冻结预训练\n权重，只训练两个\n低秩矩阵 A 和 B。\n\n秩 r＝８ 时效果就很好。"
    assert contains_evidence(chunk, "冻结预训练权重，只训练两个低秩矩阵A和B")
    assert contains_evidence(chunk, "秩 r=8 时")
    assert contains_evidence("ＬｏＲＡ 的秩", "LoRA的秩")
    assert not contains_evidence(chunk, "lora 冻结")
    assert not contains_evidence(chunk, "全量微调")
    with pytest.raises(ValueError, match="evidence"):
        contains_evidence(chunk, " \n")


def test_first_hit_rank_is_one_based():
    texts = ["Adam 优化器", "ReLU 把负数\n置零", "ReLU 把负数置零，再说一遍"]
    assert first_hit_rank(texts, "负数置零") == 2
    assert first_hit_rank(texts, "Adam") == 1
    assert first_hit_rank(texts, "LoRA") is None
    assert first_hit_rank([], "LoRA") is None


def test_hit_at_k_and_mrr():
    ranks = [1, 3, None, 2, 6]
    assert hit_at_k(ranks, 1) == pytest.approx(0.2)
    assert hit_at_k(ranks, 3) == pytest.approx(0.6)
    assert hit_at_k(ranks, 5) == pytest.approx(0.6)
    assert hit_at_k(ranks, 10) == pytest.approx(0.8)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2 + 1 / 6) / 5)
    assert mrr([None, None]) == 0.0
    assert hit_at_k([], 5) is None and mrr([]) is None
    with pytest.raises(ValueError, match="k \\(0\\)"):
        hit_at_k(ranks, 0)
    with pytest.raises(ValueError, match="1-based"):
        mrr([0, 1])


def test_refusal_metrics():
    m = refusal_metrics([True, True, False, False, True, False], [True, False, True, False, True, False])
    assert (m.n_answerable, m.n_unanswerable, m.n_refused) == (3, 3, 3)
    assert (m.true_refusals, m.false_refusals) == (2, 1)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.false_refusal_rate == pytest.approx(1 / 3)


def test_refusal_metrics_zero_denominators_are_none():
    m = refusal_metrics([False, False], [False, False])
    assert m.precision is None and m.recall is None
    assert m.false_refusal_rate == 0.0
    m = refusal_metrics([True], [True])
    assert (m.precision, m.recall, m.false_refusal_rate) == (1.0, 1.0, None)
    with pytest.raises(ValueError, match="should_refuse has 1"):
        refusal_metrics([True, False], [True])


def test_citation_metrics():
    records = [
        CitationRecord(("LoRA 冻结预训练\n权重", "Adam 优化器"), "冻结预训练权重", invalid_markers=1),
        CitationRecord(("ReLU 激活函数",), "负数置零"),
        CitationRecord((), "梯度消失"),  # refused or uncited
        CitationRecord(("ReLU 把负数置零", "负数 置零"), "负数置零", invalid_markers=2),
        CitationRecord(("随便一段",), "", invalid_markers=3, answerable=False),
    ]
    m = citation_metrics(records)
    assert (m.n_answerable, m.n_citations, m.valid_citations, m.supported_answers) == (4, 5, 3, 2)
    assert m.citation_precision == pytest.approx(3 / 5)
    assert m.supported_rate == pytest.approx(2 / 4)
    assert m.invalid_markers == 6


def test_citation_metrics_empty_and_validation():
    m = citation_metrics([CitationRecord((), "", answerable=False)])
    assert m.citation_precision is None and m.supported_rate is None and m.n_answerable == 0
    m = citation_metrics([CitationRecord((), "证据")])
    assert m.citation_precision is None and m.supported_rate == 0.0
    with pytest.raises(ValueError, match="answerable"):
        CitationRecord(("x",), "  ")
    with pytest.raises(ValueError, match="invalid_markers"):
        CitationRecord(("x",), "x", invalid_markers=-1)


def test_citation_record_from_answer():
    chunk = Chunk("c1", "d", "ReLU 把负数置零", "a.md")
    answer = Answer("问", "ReLU 把负数置零 [1]", False, (Citation(1, chunk),), (), invalid_markers=2)
    assert CitationRecord.from_answer(answer, "负数置零", True) == CitationRecord(("ReLU 把负数置零",), "负数置零", 2, True)


# ---- supported sentences ------------------------------------------------------------------------------------
LORA = "LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B。"
ADAM = "Adam 优化器的默认 beta1 为 0.9，beta2 为 0.999。"


@pytest.mark.parametrize("answer", ["LoRA 只训练低秩矩阵 A 和 B [1]。", "LoRA 只训练低秩矩阵 A 和 B。[1]",
                                    "LoRA 冻结预训练权重[1]，只训练低秩矩阵"])
def test_a_copied_sentence_with_its_marker_is_supported(answer):
    assert supported_sentences(answer, [LORA, ADAM]) == 1.0


def test_an_invented_sentence_is_not_supported_by_the_passage_it_cites():
    assert supported_sentences("LoRA 能让推理速度提高十倍 [1]。", [LORA, ADAM]) == 0.0
    assert supported_sentences("LoRA 只训练低秩矩阵 A 和 B [1]。它能让推理速度提高十倍 [1]。", [LORA, ADAM]) == 0.5


def test_a_sentence_is_checked_against_the_passages_it_cites_itself():
    assert supported_sentences("LoRA 只训练低秩矩阵 A 和 B [2]。", [LORA, ADAM]) == 0.0  # its text is in [1] only
    two = "LoRA 只训练低秩矩阵 A 和 B [1]。Adam 的默认 beta2 为 0.999 [1]。"
    assert supported_sentences(two, [LORA, ADAM]) == 0.5
    assert supported_sentences("LoRA 冻结预训练权重，Adam 的默认 beta2 为 0.999 [1][2]。", [LORA, ADAM]) == 1.0


def test_an_uncited_sentence_is_checked_against_the_passages_the_answer_cites():
    assert supported_sentences("Adam 的默认 beta2 为 0.999 [2]。LoRA 只训练低秩矩阵 A 和 B。", [LORA, ADAM]) == 0.5
    assert supported_sentences("LoRA 冻结预训练权重 [1]。它只训练低秩矩阵 A 和 B。", [LORA, ADAM]) == 1.0


def test_an_answer_citing_nothing_is_checked_against_all_passages():
    answer = "LoRA 只训练低秩矩阵 A 和 B。Adam 的默认 beta2 为 0.999。"
    assert supported_sentences(answer, [LORA, ADAM]) == 1.0
    assert supported_sentences(answer, [LORA]) == 0.5
    assert supported_sentences(answer, []) == 0.0  # no passages (the llm-only variant): nothing supports it
    assert supported_sentences("LoRA 只训练低秩矩阵 A 和 B [7]。", [LORA]) == 1.0  # a number naming no passage


def test_markers_are_removed_before_the_six_character_rule():
    assert supported_sentences("是的呀 [1][2]。", [LORA, ADAM]) is None  # 11 characters with its markers, 5 without
    assert supported_sentences("是的呀 [1][2]。LoRA 只训练低秩矩阵 [1]。", [LORA, ADAM]) == 1.0  # the short one not counted
    assert supported_sentences("秩为八八八。LoRA 只训练低秩矩阵 [1]。", [LORA, ADAM]) == 0.5  # 6 characters count


@pytest.mark.parametrize("answer", [REFUSAL, "", "  ", "[1]", "资料中没有相关信息。LoRA 冻结预训练权重 [1]。"])
def test_a_refusal_or_an_empty_answer_has_no_value(answer):
    assert supported_sentences(answer, [LORA, ADAM]) is None


def test_the_support_threshold_is_sixty_percent():
    assert supported_sentences("abcdef。", ["abcd"]) == 1.0  # 3 of its 5 bigrams (ab bc cd de ef): 0.6
    assert supported_sentences("abcdefg。", ["abcd"]) == 0.0  # 3 of 6: 0.5


def test_percentiles_linear():
    p = percentiles([40.0, 10.0, 30.0, 20.0, 100.0])
    assert p["p50"] == pytest.approx(30.0)
    assert p["p95"] == pytest.approx(88.0)  # 40 + 0.8 * (100 - 40)
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0}
    assert percentiles([]) == {"p50": None, "p95": None}
