import json

import pytest

from fakes import FakeChatModel, FakeEmbedder
from ragbot import variants as V
from ragbot.errors import ConfigError
from ragbot.evaluation.report import History, comparison_table
from ragbot.evaluation.runner import EvalRunner, QAItem, ensure_variant_indexes, load_qa, summarize, write_outputs
from ragbot.pipeline import RagPipeline
from ragbot.settings import REFUSAL

ITEMS = [
    QAItem("q1", "LoRA 的秩 r 常取多少？", "秩 r 常取 8。", "秩 r 常取 8", "lora.md", "definition"),
    QAItem("q2", "Adam 的 beta2 默认是多少？", "beta2 默认为 0.999。", "beta2 为 0.999", "adam.md", "definition"),
    QAItem("q3", "RWKV 是什么？", REFUSAL, "", "", "unanswerable"),
]


def fake_factory(reply):
    def factory(settings, retrieval):
        return RagPipeline.from_settings(settings, retrieval=retrieval, chat_model=FakeChatModel(reply),
                                         embedder=FakeEmbedder())
    return factory


def answer_from_passage(messages):
    """Answers with passage 1's text and cites it, like a perfect extractive model."""
    user = messages[-1]["content"]
    return user.split("\n")[2] + " [1]" if "[1]" in user else "不知道"


def test_runner_records_and_summarises(indexed, tmp_path):
    runner = EvalRunner(indexed, [V.BUILTIN["ragbot"]], pipeline_factory=fake_factory(answer_from_passage))
    records = runner.run(ITEMS)["ragbot"]
    assert [r.id for r in records] == ["q1", "q2", "q3"]
    assert records[2].refused and records[2].refused_by == "gate: RWKV"
    s = summarize(records)
    assert s["questions"] == 3 and s["errors"] == 0
    assert s["refusal_recall"] == 1.0 and s["false_refusal_rate"] == 0.0
    assert 0 < s["mrr"] <= 1 and s["hit@10"] == 1.0
    assert s["rougeL_char"] is not None and s["total_ms_p50"] is not None


def test_a_failing_question_is_recorded_not_raised(indexed):
    def boom(messages):
        raise RuntimeError("model crashed")

    records = EvalRunner(indexed, [V.BUILTIN["ragbot"]], pipeline_factory=fake_factory(boom)).run(ITEMS[:2])["ragbot"]
    assert all("RuntimeError: model crashed" in r.error for r in records)
    assert summarize(records)["errors"] == 2


def test_two_variants_side_by_side_with_outputs(indexed, tmp_path):
    chosen = V.resolve(["ragbot", "naive"], indexed)
    built = ensure_variant_indexes(indexed, chosen, embedder_factory=lambda s: FakeEmbedder())
    assert len(built) == 1 and built[0].endswith(V.index_key(chosen[1].settings(indexed)))
    results = EvalRunner(indexed, chosen, pipeline_factory=fake_factory(answer_from_passage)).run(ITEMS)
    summaries = {k: summarize(v) for k, v in results.items()}
    paths = write_outputs(results, summaries, tmp_path / "out", {"run": "t"})
    names = {p.name for p in paths}
    assert {"records.jsonl", "summary.json", "summary.csv", "metrics.png", "latency.png"} <= names
    lines = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["variant"] == "ragbot"
    table = comparison_table(summaries)
    assert "ragbot" in table.splitlines()[0] and "naive" in table.splitlines()[0]
    assert "(* best per metric)" in table


def test_comparison_table_marks_the_best():
    table = comparison_table({"a": {"mrr": 0.5, "false_refusal_rate": 0.1}, "b": {"mrr": 0.7, "false_refusal_rate": 0.3}})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:-1]}
    assert rows["mrr"] == ["0.500", "0.700*"]
    assert rows["false_refusal_rate"] == ["0.100*", "0.300"]


def test_history_lists_runs(tmp_path):
    h = History(tmp_path / "h.db")
    h.record("run1", "abc", "s1", "qa.jsonl", {"ragbot": {"questions": 3, "mrr": 0.5}}, "/out")
    h.record("run2", "abc", "s1", "qa.jsonl", {"ragbot": {"questions": 3, "mrr": 0.6}}, "/out")
    runs = h.runs()
    assert [r["run_id"] for r in runs] == ["run2", "run1"] and runs[0]["metrics"]["mrr"] == 0.6
    assert "run2" in h.table() and "0.600" in h.table()


def test_load_qa_names_the_bad_line(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text('{"id": "1", "question": "q", "answer": "a", "evidence": "e", "type": "how"}\n{"id": 2}\n')
    with pytest.raises(ConfigError, match="qa.jsonl:2 is not a Q&A record"):
        load_qa(f)
    f.write_text('{"id": "1", "question": "q", "answer": "a", "type": "how"}\n')
    with pytest.raises(ConfigError, match="answerable but has no evidence"):
        load_qa(f)


def test_variant_registry(tmp_path, settings):
    assert {"ragbot", "naive", "no-rerank", "llm-only"} <= set(V.available(settings))
    cfg = tmp_path / "r.toml"
    cfg.write_text('[variants.big]\ntop_k = 8\ndescription = "more passages"\n[variants.bad]\ntop_k = 0\n')
    with pytest.raises(ConfigError, match="variant 'bad'.*top_k \\(0\\)"):
        V.available(settings, cfg)
    cfg.write_text('[variants.big]\ntop_k = 8\n')
    (big,) = V.resolve(["big"], settings, cfg)
    assert big.settings(settings).top_k == 8
    with pytest.raises(ConfigError, match="unknown variant.*nope"):
        V.resolve(["nope"], settings)
    naive = V.BUILTIN["naive"].settings(settings)
    assert V.variant_index_path(settings, naive) != settings.index_path
    assert V.variant_index_path(settings, V.BUILTIN["no-rerank"].settings(settings)) == settings.index_path
