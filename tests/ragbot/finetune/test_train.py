import json

import pytest

from ragbot.errors import ConfigError
from ragbot.finetune.train import export_adapter


def test_export_ships_bf16_weights_a_portable_config_and_no_held_out_text(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    src = tmp_path / "trained"
    src.mkdir()
    weights = {"a.lora_A.weight": torch.randn(8, 16), "a.lora_B.weight": torch.randn(16, 8)}
    save_file(weights, str(src / "adapter_model.safetensors"))
    (src / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/me/models/qwen", "r": 8}))
    (src / "train_settings.json").write_text(json.dumps({"base_model": "/home/me/models/qwen", "config": {"rank": 8}}))
    card = {"filters": {"idx": {"near_duplicates_of_held_out": 1, "near_duplicate_examples": [
        {"generated": "生成的问题？", "held_out": "评测集里的问题？", "jaccard": 0.6}]}}}
    (src / "data_card.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    (src / "README.md").write_text("peft's boilerplate model card")

    written = export_adapter(src, tmp_path / "shipped", base_model="bundle:qwen")
    assert {p.name for p in written} == {"adapter_model.safetensors", "adapter_config.json", "train_settings.json",
                                         "data_card.json"}
    shipped = load_file(str(tmp_path / "shipped" / "adapter_model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in shipped.values())
    assert torch.allclose(shipped["a.lora_A.weight"].float(), weights["a.lora_A.weight"], rtol=1e-2, atol=1e-2)
    assert json.loads((tmp_path / "shipped" / "adapter_config.json").read_text())["base_model_name_or_path"] == "bundle:qwen"
    assert json.loads((tmp_path / "shipped" / "train_settings.json").read_text()) == {
        "base_model": "bundle:qwen", "config": {"rank": 8}}
    text = (tmp_path / "shipped" / "data_card.json").read_text(encoding="utf-8")
    assert "评测集里的问题" not in text and "生成的问题" in text
    with pytest.raises(ConfigError, match="not a trained adapter folder"):
        export_adapter(tmp_path / "nothing", tmp_path / "x", base_model="bundle:qwen")
