"""kohya's --weighted_captions for LoRA: the weighted text conditioning against a torch reference written from
kohya's strategy code (its attention parser, per-fragment tokenization, chunking and the per-position product
on transformers CLIP with the same weights), and a short train_network.py run with weighted captions."""
import glob
import os
import re

import numpy as np
import pytest
import torch
from mindspore import Tensor, nn
from PIL import Image

import train_network as cli
from library.models.text_conditioning import TextConditioner, weight_context
from library.text.chunking import tokenize_weighted_captions
from library.text.tokenizer import load_clip_tokenizer
from library.training import session
from test_clip_parity import rel_err, tiny_config, torch_and_ours

TOLERANCE = 1e-5

# kohya's attention syntax (strategy_base.TokenizeStrategy._re_attention), re-typed
ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:")


def kohya_attention(text):
    """[[text, weight]] as kohya's parse_prompt_attention."""
    pieces, rounds, squares = [], [], []

    def scale(start, factor):
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            rounds.append(len(pieces))
        elif token == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif token == ")" and rounds:
            scale(rounds.pop(), 1.1)
        elif token == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
        else:
            pieces.append([token, 1.0])
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    pieces = pieces or [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


def kohya_weighted_ids(tokenizer, text, max_length):
    """kohya's _get_input_ids(weighted=True): (k, 77) ids and (k, 77) weights for max_length = 75k + 2."""
    tokens, weights = [], []
    for fragment, weight in kohya_attention(text):
        ids = tokenizer(fragment).input_ids[1:-1]
        tokens += ids
        weights += [weight] * len(ids)
    tokens, weights = tokens[:max_length - 2], weights[:max_length - 2]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    tokens = [bos] + tokens + [eos] + [pad] * (max_length - 2 - len(tokens))
    weights = [1.0] + weights + [1.0] * (max_length - 1 - len(weights))
    if max_length == 77:
        return np.array([tokens]), np.array([weights])
    chunks, chunk_weights = [], []
    for i in range(1, max_length - 77 + 2, 75):
        chunk = [tokens[0]] + tokens[i:i + 75] + [tokens[-1]]
        if pad != eos:  # OpenCLIP tokenizers
            if chunk[-2] not in (eos, pad):
                chunk[-1] = eos
            if chunk[1] == pad:
                chunk[1] = eos
        chunks.append(chunk)
        chunk_weights.append([1.0] + weights[i:i + 75] + [1.0])
    return np.array(chunks), np.array(chunk_weights)


def kohya_weighted_states(states, weights):
    """encode_tokens_with_weights: states (B, 75k+2, D) of the joined chunks, weights (B, k, 77)."""
    if weights.shape[1] == 1:
        return states * weights[:, 0, :, None]
    states = states.clone()
    for i in range(weights.shape[1]):
        states[:, i * 75 + 1:i * 75 + 76] = states[:, i * 75 + 1:i * 75 + 76] * weights[:, i, 1:-1, None]
    return states


def kohya_join(states, num_chunks):
    parts = [states[:, 0:1]]
    for i in range(1, 75 * num_chunks, 77):
        parts.append(states[:, i:i + 75])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


CAPTIONS = ["a photo of (mytoy:1.5) on a [table], ((soft light))", "plain caption, nothing weighted",
            "(" + "red ball, " * 30 + ":0.7) and \\(literal\\) (blue sky"]


class WeightedConditioning(nn.Cell):
    """The objective's first lines: condition, then weight (what DiffusionObjective does with the flag on)."""

    def __init__(self, conditioner):
        super().__init__()
        self.conditioner = conditioner

    def construct(self, ids1, ids2, weights):
        context, pooled = self.conditioner(ids1, ids2)
        return weight_context(context, weights), pooled


@pytest.mark.parametrize("num_chunks", [1, 2])
def test_sd1_weighted_conditioning_matches_kohya(num_chunks):
    reference, ours, _ = torch_and_ours(tiny_config(), projection=False, seed=4)
    tokenizer = load_clip_tokenizer("eos")
    ids, weights = tokenize_weighted_captions([tokenizer], CAPTIONS, num_chunks)
    cell = WeightedConditioning(TextConditioner([ours], "sd1", None, num_chunks))
    context, pooled = cell(Tensor(ids[0]), Tensor(ids[0]), Tensor(weights))
    expected_ids, expected_weights = zip(*(kohya_weighted_ids(tokenizer, c, 75 * num_chunks + 2) for c in CAPTIONS))
    expected_ids, expected_weights = np.stack(expected_ids), np.stack(expected_weights)
    np.testing.assert_array_equal(ids[0].reshape(len(CAPTIONS), num_chunks, 77), expected_ids)
    with torch.no_grad():
        states = reference(torch.from_numpy(expected_ids.reshape(-1, 77))).last_hidden_state
        states = states.reshape(len(CAPTIONS), num_chunks * 77, -1)
        states = kohya_join(states, num_chunks) if num_chunks > 1 else states
        expected = kohya_weighted_states(states, torch.from_numpy(expected_weights).float())
    assert pooled is None
    assert rel_err(context, expected) <= TOLERANCE
    assert float(weights.max()) == pytest.approx(1.5) and float(weights.min()) == pytest.approx(0.7)


def test_sdxl_weighted_conditioning_matches_kohya():
    te1_config = tiny_config()
    te2_config = tiny_config(hidden_size=24, intermediate_size=48, hidden_act="gelu", projection_dim=20,
                             pad_token_id=0)
    reference_1, te1, _ = torch_and_ours(te1_config, projection=False, seed=5)
    reference_2, te2, _ = torch_and_ours(te2_config, projection=True, seed=6)
    tokenizers = [load_clip_tokenizer("eos"), load_clip_tokenizer("!")]
    ids, weights = tokenize_weighted_captions(tokenizers, CAPTIONS, 2)
    cell = WeightedConditioning(TextConditioner([te1, te2], "sdxl", None, 2))
    context, pooled = cell(Tensor(ids[0]), Tensor(ids[1]), Tensor(weights))
    expected = []
    with torch.no_grad():
        for tokenizer, reference, layer in zip(tokenizers, (reference_1, reference_2), (2, -2)):
            kohya = [kohya_weighted_ids(tokenizer, c, 152) for c in CAPTIONS]
            kohya_ids = np.stack([k[0] for k in kohya])
            kohya_weights = torch.from_numpy(np.stack([k[1] for k in kohya])).float()
            out = reference(torch.from_numpy(kohya_ids.reshape(-1, 77)), output_hidden_states=True)
            states = kohya_join(out.hidden_states[layer].reshape(len(CAPTIONS), 154, -1), 2)
            expected.append(kohya_weighted_states(states, kohya_weights))
            if layer == -2:  # pooled: first chunk's end-of-text state, projected; weights do not touch it
                flat = kohya_ids.reshape(-1, 77)
                eos = torch.from_numpy((flat == tokenizer.eos_token_id).argmax(axis=1))
                pool = reference.text_projection(out.last_hidden_state[torch.arange(flat.shape[0]), eos])
                expected_pooled = pool[::2]
    assert rel_err(context, torch.cat(expected, dim=-1)) <= TOLERANCE
    assert rel_err(pooled, expected_pooled) <= TOLERANCE


def _images(folder, captions):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, caption in enumerate(captions):
        pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w", encoding="utf-8") as f:
            f.write(caption)


def test_lora_cli_trains_with_weighted_captions(tmp_path, capsys):
    """One short run: the captions' weights reach the compiled step as an input (no recompiles per batch),
    the LoRA is saved, and shuffling tags with weighted captions draws kohya's warning."""
    from library.checkpoints.tiny import ensure_tiny_checkpoint
    from library.networks.training import LoRATraining

    ckpt = ensure_tiny_checkpoint("tiny-sd15", tmp_path / "tiny.safetensors")
    _images(tmp_path / "img" / "2_toy", ["a photo of (mytoy:1.5) toy", "[mytoy] on a (table:0.5)"])
    argv = ["--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(tmp_path / "img"),
            "--resolution", "64", "--caption_extension", ".txt", "--network_dim", "4", "--network_alpha", "4",
            "--learning_rate", "1e-3", "--max_train_steps", "2", "--output_dir", str(tmp_path / "out"),
            "--output_name", "w", "--seed", "1", "--weighted_captions", "--shuffle_caption"]
    assert cli.main(argv) == 0
    assert "--weighted_captions with shuffle_caption" in capsys.readouterr().out
    assert glob.glob(str(tmp_path / "out" / "w.safetensors"))

    # the weights are an input of the one compiled objective: other weights, other loss, same graph
    args = session.build_parser("test", True, cli.add_network_arguments).parse_args(
        ["--pretrained_model_name_or_path", str(ckpt), "--network_dim", "4", "--seed", "1", "--weighted_captions"])
    method = LoRATraining(args, session.load_model(args))
    rng = np.random.default_rng(3)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    batch = {"captions": ["a photo of (mytoy:1.5) toy", "a photo of mytoy toy"],
             "loss_weights": np.ones(2, np.float32), "input_ids": None}
    inputs = method.step_inputs(batch, latents, rng.standard_normal(latents.shape).astype(np.float32),
                                np.array([500, 700]))
    assert len(inputs) == 8
    caption_weights = inputs[7].asnumpy()
    assert caption_weights.shape == (2, 77) and sorted(set(caption_weights[0].tolist())) == [1.0, 1.5]
    assert (caption_weights[1] == 1.0).all()
    method.objective.set_train(False)
    weighted = float(method.objective(*inputs).asnumpy())
    ones = inputs[:7] + (Tensor(np.ones_like(caption_weights)),)
    unweighted = float(method.objective(*ones).asnumpy())
    assert np.isfinite(weighted) and weighted != unweighted
