import json

import pytest

from ragbot import variants as V
from ragbot.errors import ConfigError
from ragbot.evaluation.report import History, comparison_table
from ragbot.evaluation.runner import EvalRunner, QAItem, Record, evaluate, load_qa, load_run, summarize
from ragbot.evaluation.summary import Summary
from ragbot.models import ModelCache
from ragbot.pipeline import RagPipeline
from ragbot.settings import REFUSAL
from ragbot.store import IndexSpec
from ragbot.testing import FakeChatModel, FakeEmbedder

ITEMS = [
    QAItem("q1", "LoRA 的秩 r 常取多少？", "秩 r 常取 8。", "秩 r 常取 8", "lora.md", "definition"),
    QAItem("q2", "Adam 的 beta2 默认是多少？", "beta2 默认为 0.999。", "beta2 为 0.999", "adam.md", "definition"),
    QAItem("q3", "RWKV 是什么？", REFUSAL, "", "", "unanswerable"),
]


def fake_factory(reply=None):
    """Pipelines on the fake embedder and a fake LLM (``reply``; by default it copies the prompt's first sentence)."""
    def factory(settings, retrieval):
        return RagPipeline.from_settings(settings, retrieval=retrieval, chat_model=FakeChatModel(reply),
                                         embedder=FakeEmbedder())
    return factory


def test_runner_records_and_summarises(indexed, tmp_path):
    runner = EvalRunner(indexed, [V.BUILTIN["ragbot"]], fake_factory())
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

    records = EvalRunner(indexed, [V.BUILTIN["ragbot"]], fake_factory(boom)).run(ITEMS[:2])["ragbot"]
    assert all("RuntimeError: model crashed" in r.error for r in records)
    assert summarize(records)["errors"] == 2


def test_records_hold_the_answer_as_ask_json_prints_it(indexed):
    (record,) = EvalRunner(indexed, [V.BUILTIN["ragbot"]], fake_factory("秩 r 常取 8 [1]。")).run(ITEMS[:1])["ragbot"]
    pipeline = fake_factory("秩 r 常取 8 [1]。")(indexed, True)
    answer = pipeline.ask(ITEMS[0].question).to_dict()
    d = {k: v for k, v in record.__dict__.items() if k in answer}
    assert set(d) == set(answer) and d["answer"] == answer["answer"] and d["citations"] == answer["citations"]
    assert len(record.ranking) > 0 and record.evidence_rank == 1 and record.rouge["rougeL_char"] > 0.5


def test_evaluate_runs_variants_side_by_side_writes_outputs_and_history(indexed, tmp_path):
    chosen = V.resolve(["ragbot", "naive"], indexed)
    run = evaluate(indexed, chosen, ITEMS, qa_file="qa.jsonl", models=ModelCache(fake=True),
                   out_dir=tmp_path / "out", source="test")
    naive_key = IndexSpec.from_settings(chosen[1].settings(indexed)).key()
    assert len(run.built_indexes) == 1 and run.built_indexes[0].name.endswith(naive_key)
    assert {p.name for p in run.out_dir.iterdir()} >= {"records.jsonl", "summary.json", "summary.csv", "metrics.png",
                                                        "latency.png"}
    assert [r.variant for r in run.records] == ["ragbot"] * 3 + ["naive"] * 3 and run.errors == 0
    assert isinstance(run.summaries["naive"], Summary) and run.meta["source"] == "test"
    again = load_run(run.out_dir)
    assert again.records == run.records and again.summaries == run.summaries
    (row, *_) = History(indexed.home / "eval_history.db").runs()
    assert row["run_id"] == run.run_id and row["out_dir"] == str(run.out_dir)
    table = comparison_table(run.summaries)
    assert "ragbot" in table.splitlines()[0] and "naive" in table.splitlines()[0]
    assert "(* best per metric)" in table
    # a second run reuses the variant index and gets its own run id
    assert evaluate(indexed, chosen, ITEMS[:1], qa_file="qa.jsonl", models=ModelCache(fake=True)).built_indexes == ()


def test_evaluate_reports_supported_sentences_for_every_variant(indexed, tmp_path):
    chosen = V.resolve(["ragbot", "naive", "llm-only"], indexed)
    run = evaluate(indexed, chosen, ITEMS, qa_file="qa.jsonl", models=ModelCache(fake=True), out_dir=tmp_path / "out")
    for name in ("ragbot", "naive", "llm-only"):
        assert 0 <= run.summaries[name]["supported_sentences"] <= 1, name
    by_id = {(r.variant, r.id): r for r in run.records}
    assert by_id["ragbot", "q1"].supported_sentences == 1.0  # the fake copies its passage's first sentence
    assert by_id["ragbot", "q3"].refused and by_id["ragbot", "q3"].supported_sentences is None
    assert run.summaries["llm-only"]["supported_sentences"] == 0.0  # no passages: nothing supports its answers
    saved = json.loads((run.out_dir / "summary.json").read_text(encoding="utf-8"))["variants"]
    assert all("supported_sentences" in saved[name] for name in ("ragbot", "naive", "llm-only"))
    assert load_run(run.out_dir).records == run.records
    (row,) = [line.split() for line in comparison_table(run.summaries).splitlines() if line.startswith("supported_")]
    assert row[0] == "supported_sentences" and len(row) == 4
    history = History(indexed.home / "eval_history.db")
    assert {r["variant"] for r in history.runs() if "supported_sentences" in r["metrics"]} == {"ragbot", "naive", "llm-only"}
    assert "supported_sentences" in history.table()


def test_supported_sentences_are_checked_against_the_passages_as_the_llm_saw_them(indexed):
    reply = "LoRA 冻结预训练权重，只训练低秩矩阵 A 和 B [1]。"
    (record,) = EvalRunner(indexed, [V.BUILTIN["ragbot"]], fake_factory(reply)).run(ITEMS[:1])["ragbot"]
    assert record.supported_sentences == 1.0
    narrow = indexed.replace(max_passage_chars=10)  # the prompt shows "# LoRA\n\nLo…" of the passage
    (record,) = EvalRunner(narrow, [V.BUILTIN["ragbot"]], fake_factory(reply)).run(ITEMS[:1])["ragbot"]
    assert reply[:-5] in record.hits[0]["text"] and record.supported_sentences == 0.0


def test_the_supported_sentences_mean_leaves_out_answers_without_a_value():
    base = dict(variant="v", question="q", type="how", reference="r", evidence="e")
    records = [Record(id="1", supported_sentences=1.0, **base), Record(id="2", supported_sentences=0.5, **base),
               Record(id="3", answer=REFUSAL, refused=True, **base),  # a refusal: None
               Record(id="4", supported_sentences=0.0, error="RuntimeError", **base),  # an error is not counted
               Record.from_dict({"id": "5", **base})]  # a record of an older version: None
    assert records[4].supported_sentences is None
    assert summarize(records)["supported_sentences"] == 0.75
    assert summarize(records[2:3])["supported_sentences"] is None


def test_an_old_run_without_supported_sentences_loads_and_shows_it_missing(indexed, tmp_path):
    run = evaluate(indexed, V.resolve(["ragbot"], indexed), ITEMS[:1], qa_file="qa.jsonl", models=ModelCache(fake=True),
                   out_dir=tmp_path / "out")
    records, summary = run.out_dir / "records.jsonl", run.out_dir / "summary.json"
    old = [{k: v for k, v in json.loads(line).items() if k != "supported_sentences"}
           for line in records.read_text(encoding="utf-8").splitlines()]
    records.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in old), encoding="utf-8")
    data = json.loads(summary.read_text(encoding="utf-8"))
    del data["variants"]["ragbot"]["supported_sentences"]
    summary.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    again = load_run(run.out_dir)
    assert again.records[0].supported_sentences is None
    assert "supported_sentences" not in list(again.summaries["ragbot"]) and again.summaries["ragbot"]["supported_sentences"] is None
    assert summarize(again.records)["supported_sentences"] is None  # missing, not 0
    both = comparison_table({"old": again.summaries["ragbot"], "new": run.summaries["ragbot"]})
    (row,) = [line.split() for line in both.splitlines() if line.startswith("supported_")]
    assert row == ["supported_sentences", "n/a", "1.000"]


def test_summary_names_only_known_metrics():
    s = Summary({"mrr": 0.5, "hit@5": None})
    assert s["mrr"] == 0.5 and s.get("hit@5", 0) == 0 and list(s) == ["hit@5", "mrr"]
    with pytest.raises(KeyError, match="unknown metric 'rougel_char'"):
        s["rougel_char"]
    with pytest.raises(KeyError, match="unknown metric 'typo'"):
        Summary({"typo": 1.0})


def test_old_records_load(tmp_path):
    record = Record.from_dict({"variant": "v", "id": "1", "question": "q", "type": "how", "reference": "r",
                               "evidence": "e", "invalid_markers": 2, "no_longer_a_field": 1})
    assert record.invalid_citation_markers == 2


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
