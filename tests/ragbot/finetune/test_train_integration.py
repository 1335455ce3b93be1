"""A few LoRA steps on a tiny slice with the real base model: the loss falls and the exported adapter loads."""

import json

import pytest

from ragbot.finetune.data import ExampleBuilder
from ragbot.finetune.questions import SyntheticQA
from ragbot.finetune.train import LoraTrainer, TrainConfig, export_adapter
from ragbot.llm.hf import HFChatModel
from ragbot.settings import BUNDLED_LLM
from ragbot.types import Chunk, ScoredChunk

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACTS = [
    ("k1", "星尘模型的默认温度是 0.37。", "星尘模型的默认温度是多少？", "默认温度是 0.37。"),
    ("k2", "星尘模型的上下文长度为 9000 个 token。", "星尘模型的上下文长度是多少？", "上下文长度为 9000 个 token。"),
    ("k3", "训练星尘模型用了 12 块显卡。", "训练星尘模型用了几块显卡？", "用了 12 块显卡。"),
    ("k4", "星尘模型的词表大小是 51234。", "星尘模型的词表有多大？", "词表大小是 51234。"),
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    chunks = {cid: Chunk(cid, "d", text, "star.md") for cid, text, _, _ in FACTS}
    chunks.update({f"x{i}": Chunk(f"x{i}", "d", f"无关的第{i}段：卷积网络使用局部连接。", "cnn.md") for i in range(4)})

    def retrieve(q, k):
        return [ScoredChunk(c, 1.0, "fused") for c in chunks.values()][:k]

    pairs = [SyntheticQA(q, a, cid, "star.md", "llm") for cid, _, q, a in FACTS]
    examples = ExampleBuilder(retrieve, chunks, n_passages=2, refusal_ratio=0.0, seed=0).run(pairs)
    data = tmp_path_factory.mktemp("ftdata")
    with open(data / "train.jsonl", "w", encoding="utf-8") as f:
        for ex in examples * 3:  # repeat: a few steps should visibly fit them
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    (data / "data_card.json").write_text("{}")
    return data


def test_a_few_steps_lower_the_loss_and_the_adapter_loads(tiny_data, tmp_path, models_dir, real_chat_model):
    config = TrainConfig(rank=8, alpha=16, learning_rate=1e-3, epochs=1, grad_accum=1, val_fraction=0.0,
                         max_length=512, log_every=3, warmup_ratio=0.0)
    base = str(models_dir / BUNDLED_LLM.split(":", 1)[1])
    result = LoraTrainer(base, config, device="cpu", show_progress=False).run(tiny_data, tmp_path / "adapter")
    history = json.loads((tmp_path / "adapter" / "train_settings.json").read_text())["loss_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert result.steps == 12 and len(losses) >= 3
    assert result.cache_seconds > 0  # the fast path ran: the frozen layers came from the cache
    assert losses[-1] < losses[0] * 0.7, f"loss did not fall: {losses}"
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "data_card.json").exists()
    size = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert size < 10_000_000

    # the form the repo ships (bf16 weights, portable config) loads into the generator
    export_adapter(tmp_path / "adapter", tmp_path / "shipped", base_model=BUNDLED_LLM)
    tuned = HFChatModel(BUNDLED_LLM, models_dir, adapter=str(tmp_path / "shipped"), device="cpu")
    tuned.warm_up()
    messages = json.loads((tiny_data / "train.jsonl").read_text().splitlines()[0])["messages"]
    assert tuned.generate(messages, max_new_tokens=16)
