"""End to end with the real offline models on the bundled sample corpus."""

import pytest

from ragbot.evaluation.metrics import contains_evidence, first_hit_rank
from ragbot.pipeline import RagPipeline
from ragbot.settings import REFUSAL, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pipeline(sample_index, models_dir, real_embedder, real_chat_model):
    settings = Settings(home=models_dir.parent, index_dir=sample_index, max_new_tokens=96)
    pipe = RagPipeline.from_settings(settings, chat_model=real_chat_model, embedder=real_embedder)
    pipe.warm_up()
    return pipe


def test_every_sample_file_is_indexed_with_pages_and_headings(pipeline):
    files = pipeline.store.manifest.files.values()
    assert len(files) >= 20
    assert {f.encoding for f in files} >= {"utf-8", "gb18030", "utf-8-sig"}
    pdf_pages = {c.page for c in pipeline.store.chunks.values() if c.source.endswith(".pdf")}
    assert pdf_pages == {1, 2, 3}
    assert any(len(c.heading_path) >= 2 for c in pipeline.store.chunks.values())


def test_retrieval_finds_the_evidence_for_most_sample_questions(pipeline, sample_qa):
    answerable = [q for q in sample_qa if q["type"] != "unanswerable"]
    ranks = [first_hit_rank([h.chunk.text for h in pipeline.retrieve(q["question"], 5).final], q["evidence"])
             for q in answerable]
    found = sum(r is not None for r in ranks) / len(ranks)
    assert found >= 0.85, f"evidence in top-5 for only {found:.0%} of {len(ranks)} sample questions"


@pytest.mark.llm
def test_answered_question_cites_the_evidence(pipeline, sample_qa):
    # a question whose evidence is an invented number: only the document can supply it
    item = next(q for q in sample_qa if q["id"] == "s005")
    answer = pipeline.ask(item["question"])
    assert not answer.refused, answer.raw_text
    assert answer.citations, f"no citation in {answer.text!r}"
    assert any(contains_evidence(c.chunk.text, item["evidence"]) for c in answer.citations), answer.text


@pytest.mark.llm
def test_unanswered_question_is_refused(pipeline, sample_qa):
    item = next(q for q in sample_qa if q["type"] == "unanswerable")
    answer = pipeline.ask(item["question"])
    assert answer.refused and answer.text == REFUSAL and answer.citations == ()
