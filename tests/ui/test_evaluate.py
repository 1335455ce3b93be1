"""The ROUGE tab's logic (ui/evaluate.py): a run with fake models, its tables, and the history."""

from __future__ import annotations

import json

import pytest

from ui.evaluate import (
    best_cells,
    chart_frame,
    comparison_frame,
    filter_questions,
    load_run,
    past_runs,
    questions_frame,
    run_evaluation,
    runs_frame,
    save_qa_upload,
)
from ui.kb import UploadError
from ragbot.models import ModelCache


@pytest.fixture
def run(indexed, corpus):
    from ragbot.evaluation.runner import load_qa
    from ragbot.variants import BUILTIN

    items = load_qa(corpus / "qa.jsonl")
    return run_evaluation(indexed, [BUILTIN["ragbot"], BUILTIN["naive"]], items, str(corpus / "qa.jsonl"),
                          ModelCache(fake=True))


def test_run_writes_outputs_and_history(run, indexed):
    assert set(run.summaries) == {"ragbot", "naive"} and len(run.records) == 6
    assert (run.out_dir / "metrics.png").exists()
    again = load_run(run.out_dir)
    assert again.summaries == run.summaries and again.run_id == run.run_id
    runs = past_runs(indexed.home / "eval_history.db")
    assert [r["run_id"] for r in runs] == [run.run_id] and set(runs[0]["variants"]) == {"ragbot", "naive"}
    frame = runs_frame(runs)
    assert set(frame["方案"]) == {"ragbot", "naive"} and "ROUGE-L（字）" in frame.columns
    assert frame["有据句子占比"].notna().all()


def test_tables_and_filters(run):
    table = comparison_frame(run.summaries)
    assert list(table.columns) == ["ragbot", "naive"] and "ROUGE-L（字）" in table.index
    assert best_cells(table).to_html()  # renders
    assert table.loc["有据句子占比"].notna().all()  # supported sentences, for every variant
    assert "有据句子占比" in chart_frame(run.summaries, ["citation_precision", "supported_sentences"]).columns
    assert list(chart_frame(run.summaries, ["rougeL_char", "mrr", "hit@10"]).columns) == ["ROUGE-L（字）", "MRR", "命中@10"]
    with pytest.raises(KeyError, match="unknown metric 'nope'"):  # metric names are defined once; a typo fails
        chart_frame(run.summaries, ["rougeL_char", "nope"])
    q = questions_frame(run.records)
    assert len(q) == 6
    supported = [None if v != v else v for v in q["有据句子占比"]]  # a refusal's NaN: an empty cell
    assert supported == [r.supported_sentences for r in run.records] and None in supported
    lowest = filter_questions(q, variants=["ragbot"])
    assert list(lowest["方案"].unique()) == ["ragbot"] and lowest["ROUGE-L"].is_monotonic_increasing
    assert list(filter_questions(q, types=["不可答"])["编号"]) == ["t3", "t3"]
    assert list(filter_questions(q, text="Adam")["编号"]) == ["t2", "t2"]
    assert filter_questions(q, sort="ROUGE-L 从高到低")["ROUGE-L"].is_monotonic_decreasing


def test_uploaded_eval_set_is_checked(app_env):
    good = json.dumps({"id": "1", "question": "q", "answer": "a", "evidence": "e"}).encode()
    path = save_qa_upload(app_env, "../my set.jsonl", good, limit=10_000)
    assert path.parent == (app_env.home / "uploads" / "eval").resolve() and path.name == "my set.jsonl"
    with pytest.raises(UploadError, match="不是有效的问答 JSONL"):
        save_qa_upload(app_env, "bad.jsonl", b'{"question": "no id"}\n', limit=10_000)
    assert not (app_env.home / "uploads" / "eval" / "bad.jsonl").exists()
    with pytest.raises(UploadError, match="不支持的文件类型"):
        save_qa_upload(app_env, "x.md", good, limit=10_000)
