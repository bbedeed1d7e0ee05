"""Text conditioning per family vs a torch reference composed from transformers outputs (kohya's rules)."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from library.errors import UserError
from library.models.clip import EOS_TOKEN_ID, CLIPTextModel
from library.models.text_conditioning import (TextConditioner, conditioning_plan, context_length, encode_prompts,
                                              size_embedding_inputs)
from library.models.weights import load_state_dict, state_dict
from test_clip_parity import TOL, prompt_ids, rel_err, tiny_config, torch_and_ours


def chunked_ids(rng, batch, num_chunks, pad):
    """(B, 77k): k separately tokenized chunks, as the tokenizer side lays them out."""
    return np.concatenate([prompt_ids(rng, batch, pad) for _ in range(num_chunks)], axis=1)


def kohya_join(states, num_chunks):
    """kohya's get_hidden_states re-concatenation: BOS, then positions 1..75 of each chunk, then the last state."""
    max_token_length = 75 * num_chunks
    parts = [states[:, 0:1]]
    for i in range(1, max_token_length, 77):
        parts.append(states[:, i:i + 75])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def test_sd1_clip_skip_2_with_150_tokens():
    reference, ours, _ = torch_and_ours(tiny_config(), projection=False)
    ids = chunked_ids(np.random.default_rng(0), 2, 2, pad=EOS_TOKEN_ID)
    context, pooled = encode_prompts([ours], [ids], "sd1", clip_skip=2)
    with torch.no_grad():
        out = reference(torch.from_numpy(ids.reshape(-1, 77)), output_hidden_states=True)
        states = reference.final_layer_norm(out.hidden_states[-2]).reshape(2, 154, -1)
        expected = kohya_join(states, 2)
    assert pooled is None
    assert tuple(context.shape) == (2, 152, 16) == (2, context_length(2), 16)
    assert rel_err(context, expected) <= TOL


@pytest.fixture
def pynative():
    """Eager mode for the 23/24-layer encoders: compiling those graphs would dominate the test time, and the
    graph-mode path of the same code is covered by the SD1 and SDXL tests."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def test_sd2_conditions_on_layer_23_of_openclip_with_either_layer_count(pynative):
    # A full 24-layer OpenCLIP tower uses its penultimate layer + final LN; diffusers' 23-layer copy of the
    # same tower (last layer dropped) uses its last layer + final LN: both must give the same context.
    config = tiny_config(hidden_size=8, intermediate_size=16, num_hidden_layers=24, hidden_act="gelu",
                         pad_token_id=0)
    reference, full, _ = torch_and_ours(config, projection=False, seed=1)
    cut = CLIPTextModel(dict(config, num_hidden_layers=23))
    load_state_dict(cut, {k: v for k, v in state_dict(full).items() if ".layers.23." not in k})
    ids = prompt_ids(np.random.default_rng(1), 2, pad=0)
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), output_hidden_states=True)
        expected = reference.final_layer_norm(out.hidden_states[23])
    for model in (full, cut):
        context, pooled = TextConditioner([model], "sd2")(Tensor(ids.astype(np.int32)))
        assert pooled is None
        assert rel_err(context, expected) <= TOL


def test_sdxl_context_and_pooled_with_225_tokens():
    te1_config = tiny_config()
    te2_config = tiny_config(hidden_size=24, intermediate_size=48, hidden_act="gelu", projection_dim=20,
                             eos_token_id=2, pad_token_id=0)
    reference_1, te1, _ = torch_and_ours(te1_config, projection=False, seed=2)
    reference_2, te2, _ = torch_and_ours(te2_config, projection=True, seed=3)
    rng = np.random.default_rng(2)
    ids_1 = chunked_ids(rng, 2, 3, pad=EOS_TOKEN_ID)
    ids_2 = np.where(ids_1 == EOS_TOKEN_ID, 0, ids_1)  # tokenizer 2 pads with "!" (0) ...
    first_eos = (ids_1.reshape(-1, 77) == EOS_TOKEN_ID).argmax(axis=1)
    ids_2.reshape(-1, 77)[np.arange(6), first_eos] = EOS_TOKEN_ID  # ... after one end-of-text
    context, pooled = encode_prompts([te1, te2], [ids_1, ids_2], "sdxl", clip_skip=2)  # clip_skip: ignored
    with torch.no_grad():
        out_1 = reference_1(torch.from_numpy(ids_1.reshape(-1, 77)), output_hidden_states=True)
        out_2 = reference_2(torch.from_numpy(ids_2.reshape(-1, 77)), output_hidden_states=True)
        hidden_1 = kohya_join(out_1.hidden_states[2].reshape(2, 231, -1), 3)  # CLIP-L: hidden_states[11] of 12
        hidden_2 = kohya_join(out_2.hidden_states[-2].reshape(2, 231, -1), 3)
        expected_context = torch.cat([hidden_1, hidden_2], dim=-1)
        eos = torch.from_numpy(first_eos)
        pool = reference_2.text_projection(out_2.last_hidden_state[torch.arange(6), eos])
        expected_pooled = pool[::3]  # first chunk of each prompt
    assert tuple(context.shape) == (2, 227, 16 + 24)
    assert rel_err(context, expected_context) <= TOL
    assert rel_err(pooled, expected_pooled) <= TOL


def test_conditioning_plan_counts_layers():
    assert conditioning_plan("sd1", [12]) == [(12, 12, True)]
    assert conditioning_plan("sd1", [12], clip_skip=2) == [(11, 11, True)]
    assert conditioning_plan("sd2", [23]) == [(23, 23, True)]
    assert conditioning_plan("sd2", [24]) == [(23, 23, True)]
    assert conditioning_plan("sd2", [23], clip_skip=2) == [(22, 22, True)]
    assert conditioning_plan("sdxl", [12, 32]) == [(11, 11, False), (32, 31, False)]
    assert [context_length(k) for k in (1, 2, 3)] == [77, 152, 227]
    with pytest.raises(UserError, match="--clip_skip"):
        conditioning_plan("sd1", [3], clip_skip=4)
    with pytest.raises(UserError, match="--clip_skip"):
        conditioning_plan("sd1", [3], clip_skip=0)
    with pytest.raises(UserError, match="family"):
        conditioning_plan("sd3", [3])
    with pytest.raises(UserError, match="2 text encoders"):
        conditioning_plan("sdxl", [12])


def test_encode_prompts_refuses_bad_ids():
    model = CLIPTextModel(tiny_config(num_hidden_layers=1))
    with pytest.raises(UserError, match=r"77 \* k"):
        encode_prompts([model], [np.zeros((1, 70), np.int32)], "sd1")
    with pytest.raises(UserError, match="1 text encoder"):
        encode_prompts([model], [np.zeros((1, 77), np.int32)] * 2, "sd1")
    with pytest.raises(UserError, match="family"):
        encode_prompts([model], [np.zeros((1, 77), np.int32)])


def test_size_embedding_inputs_orders_like_sgm():
    time_ids = size_embedding_inputs([[1024, 768], [512, 512]], (0, 32), (1024, 1024))
    assert time_ids.dtype == np.float32
    np.testing.assert_array_equal(time_ids, [[1024, 768, 0, 32, 1024, 1024], [512, 512, 0, 32, 1024, 1024]])
    with pytest.raises(UserError, match="crop_tl"):
        size_embedding_inputs((64, 64), (0, 0, 0), (64, 64))
