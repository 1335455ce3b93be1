"""build_dataset end to end with fakes: a tiny index (hashing embedder), a scripted LLM question writer."""

import json
import re
from types import SimpleNamespace

import pytest

from ragbot.finetune import build_dataset
from ragbot.finetune.data import quotable

TOPICS = {
    "dropout": ("Dropout（随机失活）", "训练时以概率 p 随机把神经元的输出置零，迫使网络不依赖个别神经元。",
                "推理时不再丢弃，而是使用全部神经元。"),
    "adam": ("Adam（自适应矩估计）", "同时估计梯度的一阶矩和二阶矩，为每个参数自适应地调整学习率。",
             "默认的 beta1 为 0.9，beta2 为 0.999。"),
    "lora": ("LoRA（低秩适配）", "冻结预训练权重，只训练两个低秩矩阵，大幅减少可训练参数。",
             "秩 r 通常取 8 或 16，缩放系数 alpha 常设为秩的两倍。"),
    "bm25": ("BM25（稀疏检索）", "按词频和逆文档频率给文档打分，并对长文档做长度归一化。",
             "参数 k1 控制词频饱和，参数 b 控制长度归一化的强度。"),
    "kvcache": ("KV Cache（键值缓存）", "在自回归解码时缓存已经计算过的键和值，避免重复计算。",
                "它用显存换取解码速度，长上下文时显存占用很大。"),
    "beam": ("Beam Search（束搜索）", "每一步保留得分最高的若干条候选序列，而不是只保留一条。",
             "束宽越大，搜索越充分，但解码越慢。"),
    "softmax": ("Softmax（归一化指数函数）", "把一组实数变成和为一的概率分布，常用于多分类的输出层。",
                "数值计算时通常先减去最大值，防止指数溢出。"),
    "fp16": ("Mixed Precision（混合精度）", "用半精度做前向和反向计算，用单精度保存主权重。",
             "配合损失缩放可以避免梯度下溢。"),
    "rag": ("RAG（检索增强生成）", "先从知识库检索相关段落，再让模型依据这些段落生成回答。",
            "它能减少幻觉，并让回答可以引用来源。"),
}


@pytest.fixture
def ft_index(tmp_path, settings):
    from ingest.chunking import Chunker
    from ingest.pipeline import IngestPipeline
    from ragbot.testing import FakeEmbedder

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, (term, definition, detail) in TOPICS.items():
        (docs / f"{name}.md").write_text(f"# {term}\n\n* **{term}:** {definition}\n\n{detail}\n", encoding="utf-8")
    IngestPipeline(FakeEmbedder(), Chunker(settings.chunk_size, settings.chunk_overlap)).run([docs], settings.index_path)
    return settings


def shown_passages(user_message):
    """Passage number → what the prompt shows of it (heading line and text)."""
    fenced = user_message.split("<资料>\n", 1)[1].split("\n</资料>", 1)[0]
    parts = re.split(r"^\[(\d+)\]", fenced, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def scripted_writer(conversations, max_new_tokens=None):
    """Asked about a passage's last sentence, the writer asks what else there is to its term (the answer is that
    sentence, quoted); asked about any other sentence, it gives no question."""
    out = []
    for messages in conversations:
        prompt = messages[-1]["content"]
        text = prompt.split("资料：\n", 1)[1].split("\n\n句子：", 1)[0]
        sentence = prompt.split("\n\n句子：", 1)[1].split("\n问题：", 1)[0]
        term = re.search(r"^# (.+?)（", text, re.M).group(1)
        out.append(f"问题：{term}中{sentence[:6]}是怎样的？" if sentence in text.strip().splitlines()[-1] else "好的。")
    return out


def test_the_card_counts_every_filter_and_the_refusal_share(ft_index, tmp_path):
    from ragbot.testing import FakeEmbedder

    held_out = tmp_path / "qa.jsonl"
    held_out.write_text(json.dumps({"id": "1", "question": "LoRA中秩 r 通常是怎样的？", "answer": "略。", "evidence": "略。"},
                                   ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "ft"
    card = build_dataset(ft_index, [ft_index.index_path], out, held_out_files=[held_out], max_llm_chunks=9,
                         chat_model=SimpleNamespace(generate_batch=scripted_writer), embedder=FakeEmbedder())
    src = str(ft_index.index_path)
    dropped = card["filters"][src]["dropped"]
    for name in ("unparseable", "duplicate_question", "method_share_cap", "near_duplicate_of_held_out", "gold_missing",
                 "not_retrievable", "quote_not_found", "too_few_distractors", "refusal_skipped_topic_present"):
        assert isinstance(dropped[name], int), name
    assert dropped["unparseable"] == card["sources"][src]["llm_chunks"] == 9  # asked about two sentences a chunk, it answers one
    assert dropped["near_duplicate_of_held_out"] == 1  # "LoRA中秩 r 通常是怎样的？" is an evaluation question
    assert card["dropped"] == dropped  # one index: the totals are its counts
    written = card["sources"][src]["pairs_found_by_method"]["llm"]
    judged = ("question_form", "question_meta", "answer_length", "answer_unsupported", "question_off_topic",
              "question_restates_answer", "question_off_sentence")
    assert written + sum(dropped.get(k, 0) for k in judged) == 9  # every parsed question kept or counted

    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    refusals = sum(r["kind"] == "refusal" for r in rows)
    assert card["examples"] == len(rows) and refusals > 0
    assert card["refusal_share"] == round(refusals / len(rows), 3)
    assert card["n_passages"] == ft_index.top_k and card["max_passage_chars"] == ft_index.max_passage_chars
    assert {r["method"] for r in rows if r["kind"] == "answer"} >= {"llm", "definition"}
    for r in rows:
        passages = shown_passages(r["messages"][-1]["content"])
        assert len(passages) == ft_index.top_k
        if r["kind"] == "answer":  # every quote is verbatim in the passage its marker names
            for quote, n in re.findall(r"([^；。]+?) \[(\d+)\]", r["target"]):
                assert quote in quotable(passages[n])
    assert "LoRA中秩 r 通常是怎样的？" not in (out / "questions.jsonl").read_text(encoding="utf-8")
    markdown = (out / "data_card.md").read_text(encoding="utf-8")
    assert "dropped, by filter" in markdown and "'unparseable': 9" in markdown and "refusals" in markdown


def test_the_cli_defaults_are_build_datasets():
    import inspect

    from ragbot.cli import build_parser

    args = build_parser().parse_args(["finetune", "data", "--out", "x"])
    defaults = {k: p.default for k, p in inspect.signature(build_dataset).parameters.items()}
    assert (args.llm_chunks, args.llm_questions, args.passages, args.refusal_ratio, args.max_method_share,
            args.combined_share, args.max_questions, args.seed) == (
        defaults["max_llm_chunks"], defaults["llm_questions_per_chunk"], defaults["n_passages"],
        defaults["refusal_ratio"], defaults["max_method_share"], defaults["combined_share"],
        defaults["max_questions"], defaults["seed"])
