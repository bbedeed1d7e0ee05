"""CLIP text encoders vs transformers (same tiny config, weights copied by name), fp32, rel. error <= 1e-4."""
import numpy as np
import pytest
import torch
from mindspore import Tensor
from transformers import CLIPTextConfig
from transformers import CLIPTextModel as TorchCLIPTextModel
from transformers import CLIPTextModelWithProjection as TorchCLIPTextModelWithProjection

from library.errors import UserError
from library.models.clip import BOS_TOKEN_ID, EOS_TOKEN_ID, CLIPTextModel, CLIPTextModelWithProjection
from library.models.layers import Linear
from library.models.weights import load_state_dict

VOCAB = 49408
TOL = 1e-4


def tiny_config(**overrides):
    config = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                  num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                  projection_dim=12, bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=1)
    config.update(overrides)
    return config


def torch_and_ours(config, projection, extra_rows=0, seed=0):
    """A transformers model whose table has `extra_rows` added tokens, and ours with those as new rows."""
    torch.manual_seed(seed)
    torch_config = CLIPTextConfig(**dict(config, vocab_size=config["vocab_size"] + extra_rows))
    reference = (TorchCLIPTextModelWithProjection if projection else TorchCLIPTextModel)(torch_config).eval()
    tensors = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    if not projection:  # transformers 5 drops the `text_model.` level for CLIPTextModel; diffusers files keep it
        tensors = {"text_model." + k: v for k, v in tensors.items()}
    table_key = "text_model.embeddings.token_embedding.weight"
    table = tensors[table_key]
    tensors[table_key] = table[:config["vocab_size"]]
    ours = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    load_state_dict(ours, tensors, source="transformers state dict")
    if extra_rows:
        ours.set_new_token_rows(table[config["vocab_size"]:])
    return reference, ours, table


def prompt_ids(rng, batch, pad, inserted=()):
    """BOS + random words (+ inserted ids) + EOS, padded with `pad` to 77."""
    ids = np.full((batch, 77), pad, np.int64)
    ids[:, 0] = BOS_TOKEN_ID
    for row in range(batch):
        words = list(rng.integers(0, 49000, int(rng.integers(3, 40)))) + list(inserted)
        rng.shuffle(words)
        ids[row, 1:1 + len(words)] = words
        ids[row, 1 + len(words)] = EOS_TOKEN_ID
    return ids


def rel_err(ours, ref):
    ours = ours.asnumpy() if isinstance(ours, Tensor) else np.asarray(ours)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_clip_l_matches_transformers_every_output():
    reference, ours, _ = torch_and_ours(tiny_config(), projection=False)
    ids = prompt_ids(np.random.default_rng(1), 3, pad=EOS_TOKEN_ID)  # CLIP-L pads with end-of-text
    last, hidden, pooled = ours(Tensor(ids.astype(np.int32)))
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), output_hidden_states=True)
    assert len(hidden) == len(out.hidden_states) == 4
    for ours_state, ref_state in zip(hidden, out.hidden_states):
        assert rel_err(ours_state, ref_state) <= TOL
    assert rel_err(last, out.last_hidden_state) <= TOL
    assert rel_err(pooled, out.pooler_output) <= TOL
    # pooled is the first end-of-text position, not a padding one further right
    first_eos = (ids == EOS_TOKEN_ID).argmax(axis=1)
    np.testing.assert_array_equal(pooled.asnumpy(), last.asnumpy()[np.arange(3), first_eos])


def test_openclip_projection_pools_at_first_eos_with_a_new_token():
    # SD2 / SDXL TE2 style: exact-erf gelu, "!" (id 0) padding, a legacy config (eos_token_id 2 -> argmax pooling
    # in transformers) and a textual-inversion id 49408 that is larger than the end-of-text id.
    config = tiny_config(hidden_act="gelu", eos_token_id=2, pad_token_id=0)
    reference, ours, table = torch_and_ours(config, projection=True, extra_rows=2, seed=3)
    ids = prompt_ids(np.random.default_rng(2), 2, pad=0, inserted=(VOCAB, VOCAB + 1))
    last, hidden, pooled, text_embeds = ours(Tensor(ids.astype(np.int32)))
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), output_hidden_states=True)
        first_eos = torch.from_numpy((ids == EOS_TOKEN_ID).argmax(axis=1))
        ref_pooled = out.last_hidden_state[torch.arange(2), first_eos]
        ref_embeds = reference.text_projection(ref_pooled)
    for ours_state, ref_state in zip(hidden, out.hidden_states):
        assert rel_err(ours_state, ref_state) <= TOL
    assert rel_err(last, out.last_hidden_state) <= TOL
    assert rel_err(pooled, ref_pooled) <= TOL
    assert rel_err(text_embeds, ref_embeds) <= TOL
    # transformers' own (argmax) pooling lands on the new token instead: the case this guards against
    assert rel_err(out.text_embeds, ref_embeds) > 1e-2
    # the new-rows lookup equals a lookup in the concatenated table
    expected_embeddings = table[ids] + reference.text_model.embeddings.position_embedding.weight.detach().numpy()
    np.testing.assert_allclose(hidden[0].asnumpy(), expected_embeddings, rtol=0, atol=1e-6)


def test_an_adapter_added_to_one_layer_after_construction_is_applied():
    # LoRA appends to a Linear's `adapters` after the model is built; only that layer's output changes.
    reference, ours, _ = torch_and_ours(tiny_config(num_hidden_layers=2), projection=False, seed=5)
    adapter = Linear(32, 16, bias=False)
    ours.text_model.encoder.layers[1].mlp.fc2.adapters.append(adapter)
    for name, param in ours.parameters_and_names():
        param.name = name
    weight = torch.from_numpy(adapter.weight.asnumpy())
    reference.encoder.layers[1].mlp.fc2.register_forward_hook(lambda module, args, out: out + args[0] @ weight.T)
    ids = prompt_ids(np.random.default_rng(4), 2, pad=EOS_TOKEN_ID)
    _, hidden, _ = ours(Tensor(ids.astype(np.int32)))
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), output_hidden_states=True)
    assert rel_err(hidden[1], out.hidden_states[1]) <= TOL
    assert rel_err(hidden[2], out.hidden_states[2]) <= TOL


def test_new_token_rows_api_keeps_the_base_table():
    model = CLIPTextModel(tiny_config(vocab_size=300, num_hidden_layers=1))
    table = model.text_model.embeddings.token_embedding.weight.asnumpy().copy()
    assert model.new_token_rows().shape == (0, 16)
    rows = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
    param = model.set_new_token_rows(rows)
    names = [name for name, _ in model.parameters_and_names()]
    assert "text_model.embeddings.token_embedding.new_rows" in names
    np.testing.assert_array_equal(model.new_token_rows(), rows)
    assert model.set_new_token_rows(rows * 2) is param  # same shape: same Parameter (optimizer keeps it)
    np.testing.assert_array_equal(model.new_token_rows(), rows * 2)
    assert model.set_new_token_rows(np.zeros((3, 16))) is not param
    assert model.new_token_rows().shape == (3, 16)
    np.testing.assert_array_equal(model.token_embedding_rows([5, 7]), table[[5, 7]])
    assert np.array_equal(model.text_model.embeddings.token_embedding.weight.asnumpy(), table)
    with pytest.raises(UserError, match=r"\[N, 16\]"):
        model.set_new_token_rows(np.zeros((1, 8)))
    model.clear_new_token_rows()
    assert model.new_token_rows().shape == (0, 16)
    assert "text_model.embeddings.token_embedding.new_rows" not in [n for n, _ in model.parameters_and_names()]


def test_config_errors_name_the_key():
    with pytest.raises(UserError, match="hidden_act"):
        CLIPTextModel(tiny_config(hidden_act="relu6"))
    with pytest.raises(UserError, match="num_attention_heads"):
        CLIPTextModel(tiny_config(num_attention_heads=3))
