"""The data that flows between stages (ragbot/types.py)."""

import json

from ragbot.types import Answer, Chunk, Citation, ScoredChunk


def test_answer_to_dict_shape():
    chunk = Chunk("c1", "d", "文本", "a.md", 2, ("H",))
    answer = Answer("q", "答 [1]", False, (Citation(1, chunk),), (ScoredChunk(chunk, 0.5, "fused"),), raw_text="答 [1]",
                    invalid_markers=1, refused_by="", timings_ms={"retrieval_ms": 1.234})
    d = json.loads(json.dumps(answer.to_dict(), ensure_ascii=False))
    assert set(d) == {"question", "answer", "refused", "refused_by", "citations", "hits", "raw_answer",
                      "invalid_citation_markers", "aligned_citations", "repointed_citations", "finish_reason",
                      "timings_ms"}
    assert d["citations"][0] == {"n": 1, "chunk_id": "c1", "source": "a.md", "page": 2, "heading": "H", "text": "文本"}
    assert d["hits"][0]["score"] == 0.5 and d["hits"][0]["stage"] == "fused" and d["timings_ms"]["retrieval_ms"] == 1.2
    assert d["invalid_citation_markers"] == 1 and d["answer"] == "答 [1]"
