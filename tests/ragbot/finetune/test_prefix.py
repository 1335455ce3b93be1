"""Each speed-up of the fast training path gives the loss and gradients of the plain forward."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ragbot.finetune.prefix import (  # noqa: E402
    PrefixCache, adapted_suffix, answer_loss, cached_answer_loss, first_adapted_layer, frozen_prefix, full_answer_loss,
    pad_batch)

N_LAYERS, TOP = 4, 2


def tiny_lora(seed=0, sliding=False):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         use_sliding_window=sliding, sliding_window=8 if sliding else None, max_window_layers=2)
    model = Qwen2ForCausalLM(config).float()
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                                            layers_to_transform=list(range(N_LAYERS - TOP, N_LAYERS))))
    return lora


def example(length=40, answer=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (length,), generator=g).tolist()
    return {"input_ids": ids, "labels": [-100] * (length - answer) + ids[length - answer:]}


def plain_loss(lm, batch):
    """The stock loss: every logit, HF's own shift and mean over label tokens."""
    return lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def grads(lm):
    return {n: p.grad.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}


def test_answer_positions_only_equal_the_full_logits_loss_and_gradients():
    lm = tiny_lora()
    batch = pad_batch([example()], pad_id=0)
    plain_loss(lm, batch).backward()
    expected = grads(lm)
    lm.zero_grad()
    loss = full_answer_loss(lm, batch)
    loss.backward()
    assert torch.allclose(loss, plain_loss(lm, batch), atol=1e-5)
    for name, g in grads(lm).items():
        assert torch.allclose(g, expected[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("sliding", [False, True])
def test_cached_prefix_equals_the_full_forward_in_loss_and_gradients(tmp_path, sliding):
    lm = tiny_lora(sliding=sliding)
    rows = [example(40, 8, 1), example(30, 5, 2)]
    start = first_adapted_layer(lm)
    assert start == N_LAYERS - TOP
    cached = PrefixCache(tmp_path / "cache").run(lm, [dict(r) for r in rows], start)
    for row, with_state in zip(rows, cached):
        batch = pad_batch([row], pad_id=0)
        plain = plain_loss(lm, batch)
        plain.backward()
        expected = grads(lm)
        lm.zero_grad()
        loss = cached_answer_loss(lm, pad_batch([with_state], pad_id=0), start)
        loss.backward()
        assert torch.allclose(loss, plain, atol=1e-5)
        for name, g in grads(lm).items():
            assert torch.allclose(g, expected[name], atol=1e-6, rtol=1e-4), name
        lm.zero_grad()


def test_a_padded_micro_batch_sums_like_its_rows(tmp_path):
    lm = tiny_lora()
    rows = [example(40, 8, 1), example(25, 6, 2)]
    start = first_adapted_layer(lm)
    cached = PrefixCache(tmp_path).run(lm, rows, start)
    n_items = sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)
    together = cached_answer_loss(lm, pad_batch(cached, pad_id=0, multiple=8), start, n_items)
    apart = sum(cached_answer_loss(lm, pad_batch([r], pad_id=0), start, n_items) for r in cached)
    assert torch.allclose(together, apart, atol=1e-5)


def test_frozen_prefix_is_the_input_of_the_first_adapted_layer():
    lm = tiny_lora()
    ids = torch.tensor([example()["input_ids"]])
    seen = {}
    layer = lm.get_base_model().model.layers[2]
    def capture(_module, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        lm(input_ids=ids)
    handle.remove()
    assert torch.equal(frozen_prefix(lm, ids, 2), seen["h"])
    # and the suffix from it gives the model's own final hidden states
    with torch.no_grad():
        full = lm.get_base_model().model(input_ids=ids).last_hidden_state
        assert torch.allclose(adapted_suffix(lm, seen["h"], None, 2), full, atol=1e-5)


def test_the_cache_is_reused_for_the_same_data_and_rebuilt_for_other_data(tmp_path):
    lm = tiny_lora()
    cache = PrefixCache(tmp_path / "c", shard_size=1)
    rows = [example(20, 4, 1), example(20, 4, 2)]
    first = cache.run(lm, rows, 2)
    assert len(list((tmp_path / "c").glob("shard-*"))) == 2
    stamp = (tmp_path / "c" / "cache.json").read_text()
    again = cache.run(lm, rows, 2)
    assert all(torch.equal(a["hidden"], b["hidden"]) for a, b in zip(first, again))
    other = cache.run(lm, [example(20, 4, 3)], 2)
    assert (tmp_path / "c" / "cache.json").read_text() != stamp
    assert len(list((tmp_path / "c").glob("shard-*"))) == 1
    assert not torch.equal(other[0]["hidden"], first[0]["hidden"])


def test_first_adapted_layer_refuses_a_trainable_embedding():
    lm = tiny_lora()
    lm.get_base_model().model.embed_tokens.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen embedding"):
        first_adapted_layer(lm)


def test_answer_loss_projects_only_answer_positions():
    lm = tiny_lora()
    calls = []
    head = lm.get_base_model().lm_head
    handle = head.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    batch = pad_batch([example(40, 8)], pad_id=0)
    hidden = lm.get_base_model().model(input_ids=batch["input_ids"]).last_hidden_state
    answer_loss(lm, hidden, batch["labels"])
    handle.remove()
    assert calls == [8]  # 8 answer tokens, each predicted from the position before it


def test_the_last_layer_runs_its_mlp_only_from_the_position_before_the_answer(tmp_path):
    lm = tiny_lora()
    row = example(40, 8)
    start = first_adapted_layer(lm)
    cached = PrefixCache(tmp_path).run(lm, [row], start)
    widths = []
    layers = lm.get_base_model().model.layers
    handle = layers[-1].mlp.register_forward_hook(lambda m, a, out: widths.append(a[0].shape[1]))
    before = layers[-2].mlp.register_forward_hook(lambda m, a, out: widths.append(a[0].shape[1]))
    cached_answer_loss(lm, pad_batch(cached, pad_id=0), start)
    handle.remove()
    before.remove()
    assert widths == [40, 9]  # the layer below runs every position; the last one the 8 answer predictions + 1
