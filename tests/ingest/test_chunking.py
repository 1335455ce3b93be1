import pytest

from ingest.chunking import Chunker, markdown_sections
from ingest.loaders import LoadedDocument, Page
from ragbot.errors import ConfigError


def doc(text, kind="markdown", pages=None):
    pages = pages or (Page(None, text),)
    return LoadedDocument("/tmp/x.md", "x.md", kind, tuple(pages), "sha")


MD = """# 第一章 基础

引言段落。

## 1.1 激活函数

ReLU 把负数置零。Sigmoid 把输入压到 0 到 1 之间。

```python
import torch
x = torch.relu(torch.tensor([-1.0, 2.0]))
```

---

## 1.2 损失函数

交叉熵常用于分类。
"""


def test_chunks_are_exact_slices_with_heading_paths():
    chunks = Chunker(200, 20).run(doc(MD))
    for c in chunks:
        assert MD[c.start:c.end] == c.text
    by_text = {c.heading_path for c in chunks}
    assert ("第一章 基础", "1.1 激活函数") in by_text
    assert ("第一章 基础", "1.2 损失函数") in by_text
    relu = next(c for c in chunks if "ReLU" in c.text)
    assert "torch.relu" in relu.text, "code block stays with the prose of its section"
    assert relu.heading == "第一章 基础 > 1.1 激活函数"


def test_a_bare_heading_joins_the_section_after_it():
    sections = markdown_sections("# 书名\n\n## 第一章\n\n正文。\n")
    assert len(sections) == 1
    assert sections[0].heading_path == ("书名", "第一章")
    assert sections[0].start == 0


def test_long_sections_split_at_chinese_sentence_ends():
    sentence = "大模型通过预训练学习语言规律。"  # 15 characters
    text = "# 标题\n\n" + sentence * 40
    chunks = Chunker(100, 20).run(doc(text))
    assert len(chunks) > 5
    for c in chunks:
        assert len(c.text) <= 100
        assert c.text.endswith("。") or c.text.endswith("标题")
        assert text[c.start:c.end] == c.text


def test_overlap_repeats_text_between_neighbours():
    text = "".join(f"第{i}句话讲一个事实。" for i in range(60))
    chunks = Chunker(120, 40, mode="markdown").run(doc(text, kind="text"))
    assert any(a.end > b.start for a, b in zip(chunks, chunks[1:])), "consecutive chunks overlap"


def test_unclosed_code_fence_loses_nothing():
    text = "# 标题\n\n说明文字。\n\n```python\nprint('未闭合的代码块')\n后面还有内容。\n"
    chunks = Chunker(400, 40).run(doc(text))
    joined = "".join(c.text for c in chunks)
    assert "未闭合的代码块" in joined and "后面还有内容" in joined


def test_text_files_have_no_headings_and_pdf_pages_keep_numbers():
    pages = (Page(1, "第一页的内容。" * 3), Page(3, "第三页的内容。"))
    chunks = Chunker(400, 40).run(doc("", kind="pdf", pages=pages))
    assert [c.page for c in chunks] == [1, 3]
    assert all(c.heading_path == () for c in chunks)
    txt = Chunker(400, 40).run(doc("# 不是标题\n普通文本。", kind="text"))
    assert txt[0].heading_path == ()


def test_fixed_mode_cuts_plain_windows():
    text = "字" * 1000
    chunks = Chunker(512, 50, mode="fixed").run(doc(text))
    assert [len(c.text) for c in chunks] == [512, 512, 76]
    assert chunks[1].start == 462


def test_chunk_ids_are_unique_and_stable():
    a = Chunker(100, 10).run(doc(MD))
    b = Chunker(100, 10).run(doc(MD))
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)


@pytest.mark.parametrize("size, overlap, message", [
    (500, 600, r"chunk_overlap \(600\) must be between 0 and chunk_size \(500\) - 1"),
    (0, 0, r"chunk_size \(0\) must be at least 1"),
    (100, -1, r"chunk_overlap \(-1\)"),
])
def test_bad_sizes_are_rejected_with_the_values(size, overlap, message):
    with pytest.raises(ConfigError, match=message):
        Chunker(size, overlap)


def test_whitespace_only_page_gives_no_chunks():
    assert Chunker(100, 10).run(doc("   \n\n  ", kind="text")) == []
