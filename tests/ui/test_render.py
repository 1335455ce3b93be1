"""Safe rendering of answers, citations and passages (ui/render.py)."""

from __future__ import annotations

import re

from ragbot.types import Answer, Chunk, Citation, ScoredChunk
from ui.render import (
    answer_markdown,
    candidates_frame,
    highlighted_html,
    md_escape,
    md_escape_answer,
    passage_context,
    source_views,
    sources_html,
    timings_frame,
)

PAGE = "# 标题\n\n第一段讲背景。LoRA 冻结原权重，只训练低秩矩阵。秩 r 常取 8。\n\n第二段讲别的内容。"


def chunk(text="LoRA 冻结原权重，只训练低秩矩阵。秩 r 常取 8。", **kw):
    start = PAGE.index(text)
    defaults = dict(id="c1", doc_id="/d/lora.md", text=text, source="lora.md", page=None, heading_path=("标题",),
                    start=start, end=start + len(text))
    return Chunk(**{**defaults, **kw})


def answer(text, chunks):
    passages = tuple(ScoredChunk(c, 0.9, "fused") for c in chunks)
    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if int(n) <= len(chunks)})
    return Answer("q", text, False, tuple(Citation(n, chunks[n - 1]) for n in cited), passages)


def test_md_escape_neutralises_markdown_and_html():
    escaped = md_escape("<img src=x onerror=alert(1)> [link](javascript:x) $x$ :red[y] **b**")
    assert not re.search(r"(?<!\\)[<\[\]()$*:]", escaped)
    assert md_escape("a\nb") == "a  \nb"
    assert md_escape_answer("**重点** <b>x</b> [a](b)") == "**重点** \\<b\\>x\\</b\\> \\[a\\](b)"


HOSTILE = ("见 http://127.0.0.1:9/leak 与 HTTPS://evil.example/a?b=1、www.evil.example，"
           "[点我](http://evil.example)，写信给 root+x@evil.example。")


def test_bare_urls_and_emails_are_not_clickable(autolinks):
    assert autolinks(HOSTILE) and autolinks("http\\://x.example www\\.x.example a\\@x.example") == [
        "http://x.example", "www.x.example", "a@x.example"]  # backslash escapes alone do not stop remark-gfm
    for md in (md_escape_answer(HOSTILE), md_escape(HOSTILE)):
        assert autolinks(md) == [] and not re.search(r"(?<!\\)\]\(|(?<!\\):(?=//)", md)  # no link syntax either
        assert md.replace("\u2060", "").replace("\\", "").startswith("见 http://127.0.0.1:9/leak")  # reads the same
    assert md_escape_answer("装饰器 @property 不是邮箱") == "装饰器 @property 不是邮箱"


def test_code_in_an_answer_is_shown_as_written_and_only_prose_is_escaped():
    code = "```python\n[1,2,3] + [PAD] → [1,2,3,0]\nif a < b and c[1]: pass\n```"
    md = answer_markdown(answer(f"填充示例 [1]：\n{code}\n行内 `x[1] <b>` 与正文 <b>y</b> [1]。", [chunk()]), turn=0)
    assert code in md and "`x[1] <b>`" in md  # no backslashes inside code, no citation link there either
    assert md.count("](#cite-0-1") == 2 and "\\<b\\>y\\</b\\>" in md
    unclosed = md_escape_answer("正文 <i>\n```\n<script>x</script> [1]")
    assert unclosed.startswith("正文 \\<i\\>") and unclosed.endswith("```\n<script>x</script> [1]")


def test_answer_markdown_links_each_citation_with_a_tooltip():
    c = chunk()
    md = answer_markdown(answer('秩 r 常取 8 [1]。"引号" [7]', [c]), turn=3)
    assert '[\\[1\\]](#cite-3-1 "lora.md · 标题：LoRA 冻结原权重' in md and "\n" not in md
    assert "\\[7\\]" in md  # a marker naming no passage stays plain text
    assert '\\"' not in md.split("](#cite-3-1", 1)[0]


def test_passage_context_rebuilds_the_surrounding_text():
    class Store:
        def __init__(self, chunks):
            self._chunks = chunks

        def chunks_of(self, doc_id):
            return self._chunks

    target = chunk()
    before_text = "第一段讲背景。"
    before = chunk(before_text, id="c0", heading_path=())
    after = chunk("第二段讲别的内容。", id="c2")
    b, a = passage_context(Store([before, target, after]), target, margin=20)
    assert b.endswith(before_text) and a.startswith("\n第二段")  # the blank line between was never in a chunk
    assert passage_context(None, target) == ("", "")


def test_sources_html_escapes_everything_untrusted():
    evil = Chunk("c9", "/d/x.md", "恶意 <script>alert(1)</script> 内容。", "<img src=x onerror=alert(2)>.md",
                 heading_path=("<b>h</b>",), start=0, end=30)
    html = sources_html(source_views(answer("内容 [1]", [evil]), None), turn=0)
    assert "<script" not in html and "<img" not in html and "<b>h" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;.md" in html
    assert 'id="cite-0-1"' in html and html.count("<details") == 1


def test_highlight_and_tables():
    assert highlighted_html("a<b>c", [(1, 4)]).count("<mark") == 1
    assert "&lt;b&gt;" in highlighted_html("a<b>c", [(1, 4)])
    frame = candidates_frame([ScoredChunk(chunk(), 0.123456, "dense")])
    assert list(frame.columns) == ["#", "得分", "文件", "页", "标题", "片段"] and frame.iloc[0]["得分"] == 0.1235
    t = timings_frame({"total_ms": 10.0, "dense_ms": 1.0, "custom": 2.0})
    assert list(t["阶段"]) == ["向量检索 (dense)", "总计", "custom"]
