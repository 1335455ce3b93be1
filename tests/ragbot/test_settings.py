import pytest

from ragbot.errors import ConfigError
from ragbot import settings as settings_module
from ragbot.settings import BUNDLED_LLM, LLAMACPP_LLM, Settings


def test_defaults_use_the_offline_bundle(tmp_path):
    s = Settings.load(env={"RAGBOT_HOME": str(tmp_path)})
    assert s.embedder.startswith("bundle:") and s.llm in (BUNDLED_LLM, LLAMACPP_LLM)
    assert not s.allow_downloads
    assert s.index_path == tmp_path / "index" and s.models_dir == tmp_path / "models"


def test_toml_then_env_then_overrides(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('[ragbot]\ntop_k = 7\nchunk_size = 300\nembedder = "BAAI/bge-small-zh"\n')
    env = {"RAGBOT_TOP_K": "9", "RAGBOT_USE_BM25": "false", "RAGBOT_HOME": str(tmp_path)}
    s = Settings.load(cfg, env=env, chunk_size=None, temperature=0.5)
    assert (s.top_k, s.chunk_size, s.use_bm25, s.temperature) == (9, 300, False, 0.5)
    assert s.embedder == "BAAI/bge-small-zh"


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk_size": 500, "chunk_overlap": 600}, r"chunk_overlap \(600\) must be between 0 and chunk_size \(500\)"),
    ({"top_k": 0}, r"top_k \(0\) must be at least 1"),
    ({"temperature": -1.0}, r"temperature \(-1.0\) must be >= 0"),
    ({"device": "tpu"}, r"device \('tpu'\) must be one of auto, cpu, cuda"),
])
def test_bad_values_name_the_value_and_the_fix(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Settings(home=tmp_path, **kwargs)


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="RAGBOT_TOP_K='many' is not a valid int"):
        Settings.load(env={"RAGBOT_TOP_K": "many", "RAGBOT_HOME": str(tmp_path)})


def test_unknown_key_in_file(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text("topk = 3\n")
    with pytest.raises(ConfigError, match="unknown setting.*topk"):
        Settings.load(cfg, env={})


def test_replace_validates():
    s = Settings(home="/tmp/x")
    assert s.replace(top_k=3).top_k == 3
    with pytest.raises(ConfigError, match="unknown setting"):
        s.replace(nope=1)


def test_a_file_with_only_variant_tables_loads(tmp_path):
    # the README's example: a ragbot.toml holding nothing but [variants.*]
    path = tmp_path / "ragbot.toml"
    path.write_text('top_k = 7\n[variants.top8]\ntop_k = 8\ndescription = "eight passages"\n', encoding="utf-8")
    assert Settings.load(path, env={}).top_k == 7


@pytest.mark.parametrize("installed, device, gpu, expected", [
    (True, "auto", False, LLAMACPP_LLM), (True, "cpu", True, LLAMACPP_LLM), (True, "auto", True, BUNDLED_LLM),
    (True, "cuda", False, BUNDLED_LLM), (False, "auto", False, BUNDLED_LLM), (False, "cpu", False, BUNDLED_LLM)])
def test_llm_auto_is_llamacpp_on_the_cpu_when_its_extra_is_installed(monkeypatch, installed, device, gpu, expected):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "llama_cpp" else real(name, *a))
    monkeypatch.setattr(settings_module, "_nvidia_driver", lambda: gpu)
    s = Settings(device=device)
    assert s.llm == expected  # resolved once: manifests, records and the sidebar see the concrete backend
    assert Settings.load(env={"RAGBOT_LLM": "auto", "RAGBOT_DEVICE": device}).llm == expected
    assert s.replace(top_k=3).llm == expected and Settings(llm=BUNDLED_LLM, device=device).llm == BUNDLED_LLM
    from ragbot.llm import describe

    assert describe(s) == ("llama.cpp (in-process) · bundle (IQ4_NL)" if expected == LLAMACPP_LLM
                           else f"transformers (in-process, {s.llm_precision}) · {BUNDLED_LLM}")


def test_what_needs_torch_weights_gets_the_transformers_model_behind_llm(monkeypatch):
    monkeypatch.setattr(settings_module, "_nvidia_driver", lambda: False)
    assert Settings(llm=LLAMACPP_LLM).transformers_llm("finetune train") == BUNDLED_LLM
    assert Settings(llm="/models/qwen").transformers_llm("finetune train") == "/models/qwen"
    for llm, extra in (("llamacpp:/m/x.gguf", {}), ("openai:qwen", {"llm_base_url": "http://127.0.0.1:8000/v1"})):
        with pytest.raises(ConfigError, match=r"finetune train needs a transformers model, and llm = .* set llm = "):
            Settings(llm=llm, **extra).transformers_llm("finetune train")


def test_the_engine_auto_picked_follows_a_device_change(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp" else real(name, *a))
    monkeypatch.setattr(settings_module, "_nvidia_driver", lambda: False)
    auto = Settings()
    assert auto.llm == LLAMACPP_LLM and auto.replace(device="cuda").llm == BUNDLED_LLM
    assert auto.replace(device="cuda").replace(device="cpu").llm == LLAMACPP_LLM
    assert Settings(llm="openai:q", llm_base_url="http://x/v1").replace(device="cuda").llm == "openai:q"
