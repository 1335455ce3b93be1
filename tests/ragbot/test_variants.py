"""Named pipeline configurations (ragbot/variants.py)."""

import importlib.util

from ragbot.settings import Settings
from ragbot.variants import available


def test_optional_builtins_are_offered_only_when_they_can_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ragbot.toml
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert "llamacpp" not in available(Settings(), tmp_path / "none.toml")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp" else real(name, *a))
    variant = available(Settings(), tmp_path / "none.toml")["llamacpp"]
    assert variant.settings(Settings()).llm == "llamacpp:bundle"


def test_a_variant_may_not_carry_a_key(tmp_path):
    import pytest

    from ragbot.errors import ConfigError

    config = tmp_path / "ragbot.toml"
    config.write_text('[variants.remote]\nllm = "openai:qwen"\nllm_base_url = "http://x/v1"\nllm_api_key = "sk-1"\n')
    with pytest.raises(ConfigError, match="sets llm_api_key: keys belong in the environment") as e:
        available(Settings(), config)
    assert "sk-1" not in str(e.value)
