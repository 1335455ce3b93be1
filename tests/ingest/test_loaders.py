import codecs

import pytest

from ingest.loaders import DocumentLoader, LoadError, decode_text, discover

TEXT = "# 注意力机制\n\n自注意力让每个位置都能看到序列中的其他位置。Transformer 由它堆叠而成。\n"


@pytest.mark.parametrize("encoding, prefix", [
    ("utf-8", b""),
    ("utf-8", codecs.BOM_UTF8),
    ("gb18030", b""),
    ("gbk", b""),
    ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-16-le", b""),
    ("utf-16-be", b""),
])
def test_text_encodings_are_detected(tmp_path, encoding, prefix):
    path = tmp_path / "doc.md"
    path.write_bytes(prefix + TEXT.encode(encoding))
    doc = DocumentLoader().run(path)
    assert doc.pages[0].text == TEXT
    assert doc.pages[0].number is None
    assert doc.kind == "markdown"


def test_gbk_text_is_not_mistaken_for_another_encoding():
    text, encoding = decode_text("量化把权重从 16 位压缩到 4 位。".encode("gbk"))
    assert text == "量化把权重从 16 位压缩到 4 位。"
    assert encoding == "gb18030"


def test_crlf_line_ends_are_normalised(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("第一行\r\n第二行\r\n".encode())
    assert DocumentLoader().run(path).pages[0].text == "第一行\n第二行\n"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"   \n\n ", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "binary"),
    (bytes(range(1, 32)) * 20, "binary"),
])
def test_unreadable_text_files_give_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(LoadError) as e:
        DocumentLoader().run(path)
    assert reason in e.value.reason
    assert "bad.txt" in str(e.value)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "x.docx"
    path.write_text("hi")
    with pytest.raises(LoadError, match="unsupported file type '.docx'"):
        DocumentLoader().run(path)


def _pdf(path, pages):
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


def test_pdf_pages_keep_their_numbers_and_blank_pages_are_skipped(tmp_path):
    path = _pdf(tmp_path / "a.pdf", ["Gradient descent page one.", "", "Adam optimizer page three."])
    doc = DocumentLoader().run(path)
    assert [p.number for p in doc.pages] == [1, 3]
    assert "Adam optimizer" in doc.pages[1].text
    assert doc.skipped_pages == (2,)


def test_encrypted_pdf_is_reported(tmp_path):
    from pypdf import PdfReader, PdfWriter

    plain = _pdf(tmp_path / "plain.pdf", ["secret text"])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt("pw123")
    path = tmp_path / "locked.pdf"
    with open(path, "wb") as f:
        writer.write(f)
    with pytest.raises(LoadError, match="encrypted"):
        DocumentLoader().run(path)


def test_corrupt_pdf_is_reported(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\nthis is not a pdf\n")
    with pytest.raises(LoadError) as e:
        DocumentLoader().run(path)
    assert "broken.pdf" in str(e.value)


def test_pdf_without_text_suggests_ocr(tmp_path):
    path = _pdf(tmp_path / "scan.pdf", ["", ""])
    with pytest.raises(LoadError, match="OCR"):
        DocumentLoader().run(path)


def test_discover_walks_folders_and_reports_missing_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "c.png").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.md").write_text("d")
    found, errors = discover([tmp_path, tmp_path / "nope.md"])
    assert [f.name for f, _ in found] == ["a.md", "b.txt"]
    assert len(errors) == 1 and "does not exist" in errors[0].reason


def test_source_is_relative_to_the_ingested_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "b.txt"
    path.write_text("内容")
    assert DocumentLoader().run(path, tmp_path).source == "sub/b.txt"
    assert DocumentLoader().run(path).source == "b.txt"
