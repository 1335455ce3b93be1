"""The llama.cpp backend (ragbot/llm/llamacpp.py): the marker rules as a numpy logits processor, the peft adapter
converted to a llama.cpp LoRA GGUF, and (integration) the same greedy answers as transformers with that adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragbot.llm.constraints import MarkerRules, MarkerVocab

VOCAB = ["答", " [", "[", "1", "2", "3", "4", "5", "6", "7", "8", "9", "]", "]。", "][", "（", "E", "`", "X", "。"]
IDS = {t: i for i, t in enumerate(VOCAB)}


def processor(citable: int = 3):
    from ragbot.llm.llamacpp import _Constraints

    vocab = MarkerVocab.from_texts(VOCAB)
    return _Constraints(vocab, MarkerRules(vocab, citable, lambda ids: "".join(VOCAB[i] for i in ids)))


def allowed(proc, generated: list[str], prompt: int = 2) -> set[str]:
    """What ``proc`` lets follow ``generated`` (after a prompt of ``prompt`` tokens, seen on the first call)."""
    ids = np.array([IDS["答"]] * prompt + [IDS[t] for t in generated], dtype=np.intc)
    if proc.prompt_len is None:
        proc(ids[:prompt], np.zeros(len(VOCAB), dtype=np.float32))
    out = proc(ids, np.zeros(len(VOCAB), dtype=np.float32))
    return {VOCAB[i] for i in np.isfinite(out).nonzero()[0]}


def test_the_marker_rules_as_a_llamacpp_logits_processor():
    everything = set(VOCAB)
    assert allowed(processor(), []) == everything - {" [", "["}  # an answer never starts with a marker
    assert allowed(processor(), ["答", " ["]) == {"1", "2", "3"}  # only given passages
    assert allowed(processor(), ["答", " [", "2"]) == {"]", "]。", "]["}
    assert allowed(processor(), ["答", "E", "["]) == everything  # E[X]: maths
    assert allowed(processor(), ["答", "`", " ["]) == everything  # inside code
    assert allowed(processor(), ["答", " [", "1", "]"]) == everything - {"（"}  # no "（heading）" after a marker
    p = processor()
    allowed(p, ["答"])
    assert p.generated == [IDS["答"]]  # what the loop check reads


def test_the_echo_rule_in_the_llamacpp_processor():
    from ragbot.llm.constraints import EchoRule
    from ragbot.llm.llamacpp import _Constraints

    vocab = MarkerVocab.from_texts(VOCAB + ["为", "什", "么", "？", "<end>"])
    texts = VOCAB + ["为", "什", "么", "？", ""]
    decode = lambda ids: "".join(texts[i] for i in ids)  # noqa: E731
    ids = {t: i for i, t in enumerate(texts)}
    stop = len(texts) - 1
    proc = _Constraints(vocab, MarkerRules(vocab, 3, decode), EchoRule("答为什么？", vocab, frozenset({stop}), decode))
    proc(np.array([0, 0], dtype=np.intc), np.zeros(len(texts), dtype=np.float32))
    out = proc(np.array([0, 0] + [ids[c] for c in "答为什么"], dtype=np.intc), np.zeros(len(texts), dtype=np.float32))
    assert set(np.isinf(out).nonzero()[0].tolist()) == {ids["？"], stop}
    out = proc(np.array([0, 0] + [ids[c] for c in "答为什么"] + [ids["。"]], dtype=np.intc),
               np.zeros(len(texts), dtype=np.float32))
    assert set(np.isinf(out).nonzero()[0].tolist()) == {ids["？"], stop}  # "。" does not make it an answer
    out = proc(np.array([0, 0] + [ids[c] for c in "答为什么"] + [ids["X"]], dtype=np.intc),
               np.zeros(len(texts), dtype=np.float32))
    assert np.isfinite(out).all()  # it says something


class _FakeLlama:
    """llama-cpp-python's ``Llama`` as ``stream`` uses it: it runs the logits processor once after the prompt
    ``[0, 0]`` and once after the scripted reply, records what the processor banned there, and streams the reply."""

    def __init__(self, texts: list[str], reply: str) -> None:
        self.texts, self.reply, self.banned = texts, reply, None

    def detokenize(self, ids):
        return "".join(self.texts[i] for i in ids).encode()

    def create_chat_completion(self, messages, *, logits_processor, **kwargs):
        return self._chunks(logits_processor)

    def _chunks(self, logits_processor):
        ids = {t: i for i, t in enumerate(self.texts)}
        processor = logits_processor[0]
        processor(np.array([0, 0], dtype=np.intc), np.zeros(len(self.texts), dtype=np.float32))
        out = processor(np.array([0, 0] + [ids[c] for c in self.reply], dtype=np.intc),
                        np.zeros(len(self.texts), dtype=np.float32))
        self.banned = {self.texts[i] or "<stop>" for i in np.isinf(out).nonzero()[0]}
        yield {"choices": [{"delta": {"content": self.reply}, "finish_reason": "stop"}]}


def test_stream_gives_the_question_to_the_echo_rule():
    from ragbot.llm.base import control_pattern
    from ragbot.llm.llamacpp import LlamaCppChatModel

    texts = VOCAB + ["为", "什", "么", "？", ""]
    model = LlamaCppChatModel("bundle", Path("."))
    model.llm = _FakeLlama(texts, "答为什么")
    model.vocab, model._stops, model._controls = MarkerVocab.from_texts(texts), frozenset({len(texts) - 1}), control_pattern(())
    messages = [{"role": "user", "content": "问题：答为什么？"}]
    assert "".join(model.stream(messages, question="答为什么？")) == "答为什么"
    assert model.llm.banned == {"？", "<stop>"}
    "".join(model.stream(messages))
    assert model.llm.banned == set()  # no question, no rule


def test_the_vocabulary_pass_collects_the_ids_that_end_or_write_nothing():
    import types

    from ragbot.llm.llamacpp import _vocab_texts

    pieces = [b"<|im_end|>", b"<|im_start|>", b"\xe7\xad\x94", b"<tool>", b"x"]
    control, user = 1, 2
    attrs = [control, control, 0, user, 0]

    def to_piece(vocab, i, buf, size, lstrip, special):
        buf.raw = pieces[i] + bytes(size - len(pieces[i]))
        return len(pieces[i])

    llama_cpp = types.SimpleNamespace(
        llama_token_to_piece=to_piece, llama_vocab_get_attr=lambda vocab, i: attrs[i],
        llama_vocab_is_eog=lambda vocab, i: i in (0, 4), LLAMA_TOKEN_ATTR_CONTROL=control,
        LLAMA_TOKEN_ATTR_USER_DEFINED=user)
    llm = types.SimpleNamespace(_model=types.SimpleNamespace(vocab=None), n_vocab=lambda: len(pieces))
    texts, controls, stops = _vocab_texts(llama_cpp, llm)
    assert texts == ["", "", "答", "<tool>", "x"] and controls == {"<|im_end|>", "<|im_start|>", "<tool>"}
    assert stops == {0, 1, 4}  # the end-of-generation ids and the control tokens


def _tiny_base_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _peft_folder(path: Path, *, rank: int = 2, alpha: int = 4, **config) -> Path:
    from safetensors.numpy import save_file

    path.mkdir()
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in (0, 1):
        for module, (n_in, n_out) in {"self_attn.q_proj": (8, 8), "mlp.down_proj": (16, 8)}.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, n_in)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((n_out, rank)).astype(np.float32)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha, **config}))
    return path


def test_a_peft_adapter_becomes_a_llamacpp_lora_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    from ragbot.errors import ConfigError
    from ragbot.llm.llamacpp import adapter_gguf

    base = _tiny_base_gguf(tmp_path / "base.gguf")
    out = adapter_gguf(_peft_folder(tmp_path / "adapter"), base, tmp_path / "cache")
    reader = gguf.GGUFReader(str(out))
    field = lambda name: reader.fields[name].parts[-1]  # noqa: E731
    assert bytes(field("general.type")).decode() == "adapter" and bytes(field("adapter.type")).decode() == "lora"
    assert float(field("adapter.lora.alpha")[0]) == 4.0 and bytes(field("general.architecture")).decode() == "qwen2"
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # ggml order: (ne0, ne1)
    assert shapes["blk.1.attn_q.weight.lora_a"] == (8, 2) and shapes["blk.1.attn_q.weight.lora_b"] == (2, 8)
    assert shapes["blk.0.ffn_down.weight.lora_a"] == (16, 2) and shapes["blk.0.ffn_down.weight.lora_b"] == (2, 8)
    assert len(shapes) == 8
    assert adapter_gguf(tmp_path / "adapter", base, tmp_path / "cache") == out  # cached by content
    with pytest.raises(ConfigError, match="DoRA, rsLoRA, modules_to_save or per-module ranks"):
        adapter_gguf(_peft_folder(tmp_path / "dora", use_dora=True), base, tmp_path / "cache")
    with pytest.raises(ConfigError, match="per-module ranks"):
        adapter_gguf(_peft_folder(tmp_path / "ranks", rank_pattern={"q_proj": 4}), base, tmp_path / "cache")
    with pytest.raises(ConfigError, match="not a peft LoRA folder"):
        adapter_gguf(tmp_path, base, tmp_path / "cache")


@pytest.mark.integration
@pytest.mark.llamacpp
@pytest.mark.llm
def test_the_converted_adapter_answers_as_transformers_does(models_dir, tmp_path):
    """The shipped adapter through llama.cpp (Q4_K_M base + converted LoRA) gives the same greedy answers as
    transformers (bf16 base + merged LoRA) on a few grounded prompts. The base is the joined Q4_K_M file, whose
    weights transformers dequantises, so a difference can only come from the conversion (``llamacpp:bundle``
    runs an IQ4_NL requantisation of it, whose answers differ by quantisation alone)."""
    pytest.importorskip("llama_cpp")
    from ragbot.generation import Generator
    from ragbot.llm.hf import HFChatModel
    from ragbot.llm.llamacpp import LlamaCppChatModel, bundled_gguf
    from ragbot.settings import BUNDLED_LLM
    from ragbot.types import Chunk, ScoredChunk

    adapter = Path(__file__).resolve().parents[3] / "ragbot" / "assets" / "adapter"
    texts = ["LoRA 冻结预训练模型的权重，只在每层旁路训练两个低秩矩阵 A 和 B，可训练参数因此大大减少。",
             "Adam 优化器为每个参数维护一阶矩和二阶矩的滑动平均，默认 beta1 为 0.9，beta2 为 0.999。"]
    passages = [ScoredChunk(Chunk(id=f"c{i}", doc_id=f"d{i}", text=t, source=f"doc{i}.md"), 1.0, "rerank")
                for i, t in enumerate(texts)]
    questions = ["LoRA 冻结什么？", "Adam 的 beta1 默认是多少？", "BERT 有多少层？"]
    hf = HFChatModel(BUNDLED_LLM, models_dir, adapter=str(adapter), device="cpu", precision="bf16")
    cpp = LlamaCppChatModel(str(bundled_gguf(models_dir, show_progress=False)), models_dir, adapter=str(adapter))
    got = {name: [Generator(m, max_new_tokens=64).run(q, passages).raw_text for q in questions]
           for name, m in (("transformers", hf), ("llamacpp", cpp))}
    assert got["llamacpp"] == got["transformers"]


def test_the_bundle_is_requantised_once_under_a_stamp_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    """bundled_cpu_gguf with a fake llama.cpp: made once (the stamp vouches for it, no source needed after), made
    again when the stamp no longer matches, and a failed requantisation leaves no file, stamp or temporary."""
    import types

    import ragbot.llm.llamacpp as L
    from ragbot.errors import ModelBundleError

    source = tmp_path / "source.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 64)
    calls = []

    def quantize(src, dst, params):
        calls.append(params.ftype)
        if fake.fail:
            return 1
        Path(dst.decode()).write_bytes(b"GGUF-requantised")
        return 0

    fake = types.SimpleNamespace(
        fail=False, __version__="test", LLAMA_FTYPE_MOSTLY_IQ4_NL=25, llama_model_quantize=quantize,
        llama_model_quantize_default_params=lambda: types.SimpleNamespace(ftype=0, allow_requantize=False, nthread=0))
    monkeypatch.setattr(L, "_llama_cpp", lambda: fake)
    monkeypatch.setattr(L, "bundled_gguf", lambda models_dir, show_progress=True: source)

    path = L.bundled_cpu_gguf(tmp_path, show_progress=False)
    stamp = json.loads(path.with_name(path.name + ".json").read_text())
    assert path.read_bytes() == b"GGUF-requantised" and calls == [25]
    assert stamp["type"] == "IQ4_NL" and stamp["size"] == path.stat().st_size and len(stamp["sha256"]) == 64
    source.unlink()  # once made, the stamp is enough: no join, no requantisation
    assert L.bundled_cpu_gguf(tmp_path, show_progress=False) == path == L.cpu_gguf_ready(tmp_path)
    assert calls == [25]

    source.write_bytes(b"GGUF")
    path.write_bytes(b"torn")  # a file the stamp does not describe is made again
    assert L.cpu_gguf_ready(tmp_path) is None
    assert L.bundled_cpu_gguf(tmp_path, show_progress=False).read_bytes() == b"GGUF-requantised" and len(calls) == 2

    path.write_bytes(b"torn")
    fake.fail = True
    with pytest.raises(ModelBundleError, match=r"could not requantise .* use llm = 'llamacpp:"):
        L.bundled_cpu_gguf(tmp_path, show_progress=False)
    assert not path.with_name(path.name + ".json").exists() or L.cpu_gguf_ready(tmp_path) is None
    assert not list(tmp_path.glob("*.partial"))
