import codecs
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from ingest import loaders
from ingest.loaders import DocumentLoader, LoadError, decode_text, discover, display_path

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


# --- legacy CJK encodings, NUL bytes, bad UTF-8 ----------------------------------------------------

SIMPLIFIED = (
    "深度学习是机器学习的一个分支，它使用多层神经网络从数据中学习表示。\n"
    "卷积神经网络擅长处理图像，循环神经网络和 Transformer 擅长处理序列。\n"
    "训练时，我们用反向传播计算梯度，再用随机梯度下降或 Adam 更新参数。\n"
    "大语言模型在海量文本上预训练，然后通过指令微调和人类反馈强化学习对齐。\n"
)
TRADITIONAL = (
    "深度學習是機器學習的一個分支，它使用多層神經網路從資料中學習表示。\n"
    "卷積神經網路擅長處理影像，循環神經網路與 Transformer 擅長處理序列。\n"
    "訓練時，我們以反向傳播計算梯度，再用隨機梯度下降或 Adam 更新參數。\n"
)
JAPANESE = (
    "深層学習は機械学習の一分野であり、多層のニューラルネットワークを使ってデータから表現を学習します。\n"
    "畳み込みニューラルネットワークは画像の処理が得意で、Transformer は系列の処理に向いています。\n"
    "学習では誤差逆伝播法で勾配を計算し、確率的勾配降下法や Adam でパラメータを更新します。\n"
)
SHORT_GBK = "量化把权重压缩到 4 位。\n推理速度提高了两倍。\n"


@pytest.mark.parametrize("text, codec, expected", [
    (SIMPLIFIED, "gbk", "gb18030"),
    (SHORT_GBK, "gbk", "gb18030"),
    ("结果：98.5%（±0.3%）；损失=0.012。\n", "gbk", "gb18030"),  # short and symbol-heavy: charset-normalizer scores it 0.48 chaos
    (TRADITIONAL, "big5", "cp950"),
    ("注意力機制讓模型關注重要的詞。\n", "big5", "cp950"),
    (JAPANESE, "shift_jis", "cp932"),
    ("これはテストです。\n", "shift_jis", "cp932"),
    ("モデル\n", "shift_jis", "cp932"),  # kanji-free katakana that also decodes as GB18030 ("儌僨儖")
])
def test_legacy_cjk_encodings_are_told_apart(tmp_path, text, codec, expected):
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode(codec))
    doc = DocumentLoader().run(path)
    assert (doc.pages[0].text, doc.encoding) == (text, expected)


@pytest.mark.parametrize("offset", [40, 41])
@pytest.mark.parametrize("tail", ["", "!"])  # with an even file length the NUL once made it read as UTF-16 mojibake
def test_utf8_with_a_stray_nul_is_read_as_utf8(tmp_path, offset, tail):
    data = (SIMPLIFIED + tail).encode()
    offset = next(i for i in range(offset, len(data), 2) if data[i] < 0x80 or data[i] >= 0xC0)  # between characters
    path = tmp_path / "doc.md"
    path.write_bytes(data[:offset] + b"\x00" + data[offset:])
    doc = DocumentLoader().run(path)
    assert doc.pages[0].text == SIMPLIFIED + tail
    assert doc.encoding == "utf-8 (NUL bytes removed)"
    assert doc.notes == (f"1 NUL byte(s) removed (the first at byte {offset})",)


def test_utf16_without_bom_and_without_ascii_is_detected(tmp_path):
    text = "深度学习是机器学习的一个分支。\n神经网络由许多层组成。\n"
    for codec in ("utf-16-le", "utf-16-be"):
        path = tmp_path / f"{codec}.txt"
        path.write_bytes(text.encode(codec))
        assert DocumentLoader().run(path).pages[0].text == text


def test_utf8_cut_mid_character_is_not_read_as_gb18030(tmp_path):
    path = tmp_path / "cut.md"
    path.write_bytes(SIMPLIFIED.encode()[:-2])  # the last "。" loses a byte, which once sent the whole file to GB18030
    doc = DocumentLoader().run(path)
    assert doc.encoding == "utf-8"
    assert doc.pages[0].text == SIMPLIFIED[:-2] + "\ufffd"
    assert "1 invalid UTF-8 byte sequence(s) replaced" in doc.notes[0]


def test_a_byte_order_mark_on_other_bytes_is_reported(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + "文本".encode("utf-16-le") + b"\x00")  # an odd byte after the text
    with pytest.raises(LoadError, match="starts with a UTF-16 byte-order mark but is not UTF-16 text"):
        DocumentLoader().run(path)


def test_undecodable_text_names_the_encodings_tried():
    with pytest.raises(ValueError, match="neither UTF-8, UTF-16, GB18030/GBK, Big5 nor Shift-JIS"):
        decode_text(b"\x81\x7f\xff")


# --- file names and errors -------------------------------------------------------------------------

def test_a_file_name_with_gbk_bytes_loads_and_prints(tmp_path, capsys):
    folder = os.fsencode(str(tmp_path))
    for name, content in ((b"\xb2\xe2\xca\xd4.md", "# 测试\n内容".encode()), (b"\xb2\xe2.txt", b"")):
        fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, content)
        os.close(fd)
    (empty, root), (good, _) = discover([tmp_path])[0]  # sorted: "." comes before the surrogate \udcca
    doc = DocumentLoader().run(good, root)
    assert doc.source == "\\xb2\\xe2\\xca\\xd4.md"
    assert Path(doc.doc_id).exists()  # the real name, surrogates and all, still finds the file
    with pytest.raises(LoadError) as e:
        DocumentLoader().run(empty, root)
    assert e.value.path.endswith("\\xb2\\xe2.txt") and e.value.reason == "is empty"
    print(doc.source, e.value.path, e.value)  # raised UnicodeEncodeError when the names held surrogates
    assert "\\xb2\\xe2.txt: is empty" in capsys.readouterr().out


def test_display_path_escapes_bytes_and_control_characters():
    assert display_path(os.fsdecode(b"a/\xb2\xe2.md")) == "a/\\xb2\\xe2.md"
    assert display_path("x\n\x1b[31mred.md") == "x\\x0a\\x1b[31mred.md"
    assert display_path(Path("笔记/注意力.md")) == "笔记/注意力.md"


@pytest.mark.parametrize("error, reason", [
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "(UnicodeDecodeError: 'utf-8' codec can't"),
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (MemoryError(), "ran out of memory"),
])
def test_any_error_while_loading_becomes_a_load_error(tmp_path, monkeypatch, error, reason):
    import pypdf

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(loaders, "_decode", boom)
    monkeypatch.setattr(pypdf, "PdfReader", boom)
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4\n")
    for name in ("a.txt", "a.pdf"):
        with pytest.raises(LoadError) as e:
            DocumentLoader().run(tmp_path / name)
        assert reason in e.value.reason


# --- PDFs and limits -------------------------------------------------------------------------------

def _encrypted(tmp_path, user_password, algorithm):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(_pdf(tmp_path / "plain.pdf", ["Attention is all you need."])))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm=algorithm)
    path = tmp_path / f"{algorithm}.pdf"
    writer.write(path)
    return path


def test_aes256_pdf_with_a_user_password_is_reported(tmp_path):
    with pytest.raises(LoadError) as e:
        DocumentLoader().run(_encrypted(tmp_path, "user-secret", "AES-256"))
    assert "encrypted PDF" in e.value.reason and "qpdf" in e.value.reason


def test_pdf_with_only_an_owner_password_loads(tmp_path):
    doc = DocumentLoader().run(_encrypted(tmp_path, "", "AES-128"))
    assert "Attention is all you need." in doc.pages[0].text


def test_pdf_stops_at_the_page_and_character_limits(tmp_path):
    path = _pdf(tmp_path / "a.pdf", ["Page one text.", "Page two text.", "Page three text."])
    doc = DocumentLoader(max_pdf_pages=2).run(path)
    assert [p.number for p in doc.pages] == [1, 2]
    assert doc.notes == ("read 2 of 3 pages (max_pdf_pages is 2); raise max_pdf_pages to read the rest",)
    doc = DocumentLoader(max_pdf_chars=20).run(path)
    assert [p.text for p in doc.pages] == ["Page one text.", "Page t"]
    assert doc.notes == ("text cut at 20 characters on page 2 of 3 (max_pdf_chars); raise max_pdf_chars to read the rest",)


def test_long_lines_are_cut_with_a_note(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("short\n" + "x" * 25 + "\nok\n" + "y" * 11)
    doc = DocumentLoader(max_line_chars=10).run(path)
    assert doc.pages[0].text == "short\n" + "x" * 10 + "\nok\n" + "y" * 10
    assert doc.notes == ("line 2 cut at 10 characters (it had 25); raise max_line_chars to keep more",
                         "line 4 cut at 10 characters (it had 11); raise max_line_chars to keep more")


@pytest.mark.parametrize("name, line", [("one.txt", "a"), ("one.md", "深")])
def test_a_20_mb_single_line_file_loads_in_bounded_memory_and_time(tmp_path, name, line):
    path = tmp_path / name
    path.write_bytes(line.encode() * (20 * 2**20 // len(line.encode())))
    tracemalloc.start()
    t = time.perf_counter()
    try:
        doc = DocumentLoader().run(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t < 5
    assert peak < 200 * 2**20
    assert len(doc.pages[0].text) == 20_000
    assert doc.notes[0].startswith("line 1 cut at 20,000 characters (it had ")


@pytest.mark.parametrize("field", ["max_line_chars", "max_pdf_pages", "max_pdf_chars"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=f"{field} \\(0\\) must be at least 1"):
        DocumentLoader(**{field: 0})


def test_binary_with_regular_nuls_is_not_read_as_utf16(tmp_path):
    f = tmp_path / "binary.txt"
    f.write_bytes(b"\x00\x01\x02\x03" * 64)  # zeros at even offsets: UTF-16-BE would be control characters
    with pytest.raises(LoadError, match="binary"):
        DocumentLoader().run(f)
