"""End to end with the real offline models on the bundled sample corpus."""

import re

import pytest

from ragbot.evaluation.metrics import contains_evidence, first_hit_rank
from ragbot.pipeline import RagPipeline
from ragbot.settings import BUNDLED_LLM, REFUSAL, Settings

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


ECHOED = "注意力为什么要除以根号 d？"  # the base model replied with exactly this question (llama.cpp IQ4_NL, greedy)


@pytest.mark.llm
@pytest.mark.parametrize("backend", ["transformers", pytest.param("llamacpp", marks=pytest.mark.llamacpp)])
def test_a_question_is_answered_not_said_back(pipeline, backend, models_dir):
    if backend == "llamacpp":
        pytest.importorskip("llama_cpp")
        from ragbot.llm.llamacpp import LlamaCppChatModel

        pipeline = RagPipeline(pipeline.settings, pipeline.store, pipeline.embedder,
                               LlamaCppChatModel("bundle", models_dir), pipeline.reranker)
    answer = pipeline.ask(ECHOED)
    said = re.sub(r"\[\d\]|\s|[？?。]", "", answer.text)
    assert not answer.refused and said not in re.sub(r"\s|？", "", ECHOED), answer.raw_text
    assert any("√d_k" in c.chunk.text for c in answer.citations), answer.text


@pytest.fixture(scope="module")
def finetuned(sample_index, models_dir, real_embedder):
    from ragbot.variants import SHIPPED_ADAPTER

    if not (SHIPPED_ADAPTER / "adapter_config.json").exists():
        pytest.fail(f"no adapter shipped in {SHIPPED_ADAPTER}; reproduce it with scripts/train_adapter.sh")
    # transformers + the merged adapter, what the thresholds below were measured on (llama.cpp + the converted
    # adapter gives the same greedy answers on the same base: tests/ragbot/llm/test_llamacpp.py)
    settings = Settings(home=models_dir.parent, index_dir=sample_index, max_new_tokens=96, adapter=str(SHIPPED_ADAPTER),
                        llm=BUNDLED_LLM, repoint_citations=False)  # the model's own citations
    pipe = RagPipeline.from_settings(settings, embedder=real_embedder)
    pipe.warm_up()
    return pipe


@pytest.mark.llm
def test_shipped_adapter_answers_sample_questions_from_the_cited_passage(finetuned, sample_qa):
    # the fine-tuned answerer cites by itself: its answers carry markers before any alignment
    items = [q for q in sample_qa if q["type"] != "unanswerable"][:6]
    answers = [finetuned.ask(q["question"]) for q in items]
    cited_right = [any(contains_evidence(c.chunk.text, q["evidence"]) for c in a.citations) for q, a in zip(items, answers)]
    self_cited = [a.aligned_citations == 0 and bool(a.citations) for a in answers]
    assert sum(cited_right) >= 4, [(q["id"], a.text) for q, a in zip(items, answers)]
    assert all(not a.refused for a in answers), [a.text for a in answers if a.refused]
    # measured on these six: the shipped adapter cites by itself in 3, the base model in none (all aligned)
    assert sum(self_cited) >= 3, [a.raw_text for a in answers]
