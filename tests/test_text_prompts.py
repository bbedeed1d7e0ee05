"""Prompt weighting syntax and 75-token chunking (kohya --max_token_length / gen_img weighted prompts)."""
import numpy as np
import pytest

from library.errors import UserError
from library.text.chunking import (chunks_needed, expand_embedding_tokens, make_tokenize_fn, tokenize_chunks,
                                   tokenize_weighted)
from library.text.prompt_weighting import parse_prompt_weights
from library.text.tokenizer import load_clip_tokenizer

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def clip_l():
    return load_clip_tokenizer("eos")


@pytest.fixture(scope="module")
def open_clip():
    return load_clip_tokenizer("!")


def _close(a, b):
    return len(a) == len(b) and all(abs(x - y) < 1e-9 for x, y in zip(a, b))


@pytest.mark.parametrize("text, fragments, weights", [
    ("a cat", ["a cat"], [1.0]),
    ("a (cat) on a mat", ["a ", "cat", " on a mat"], [1.0, 1.1, 1.0]),
    ("((cat))", ["cat"], [1.1 * 1.1]),
    ("[dog]", ["dog"], [1 / 1.1]),
    ("(cat:1.5), [dog (bone:2)]", ["cat", ", ", "dog ", "bone"], [1.5, 1.0, 1 / 1.1, 2 / 1.1]),
    ("(cat: 0.5 )", ["cat"], [0.5]),
    (r"\(literal\) \[x\] a\\b", [r"(literal) [x] a\b"], [1.0]),
    ("unclosed (red cat", ["unclosed ", "red cat"], [1.0, 1.1]),
    ("stray ) and ] and a:b", ["stray ) and ] and a:b"], [1.0]),
    ("", [""], [1.0]),
])
def test_parse_prompt_weights(text, fragments, weights):
    got_fragments, got_weights = parse_prompt_weights(text)
    assert got_fragments == fragments and _close(got_weights, weights)


def _kohya_training_chunks(tokenizer, caption, num_chunks):
    """kohya train_util's long-caption layout, from HF padding/truncation (an independent path)."""
    max_length = 75 * num_chunks + 2
    ids = np.array(tokenizer(caption, padding="max_length", truncation=True, max_length=max_length)["input_ids"])
    if num_chunks == 1:
        return ids
    pad = tokenizer.pad_token_id
    chunks = []
    for i in range(1, max_length - 77 + 2, 75):
        chunk = np.concatenate([ids[:1], ids[i:i + 75], ids[-1:]])
        if pad != EOS:
            if chunk[-2] != EOS and chunk[-2] != pad:
                chunk[-1] = EOS
            if chunk[1] == pad:
                chunk[1] = EOS
        chunks.append(chunk)
    return np.concatenate(chunks)


CAPTIONS = ["a photo of a cat", " ".join(["cat"] * 74), " ".join(["cat"] * 75), " ".join(["cat"] * 76),
            " ".join(["dog"] * 150), " ".join(["red fox"] * 130), ""]


@pytest.mark.parametrize("num_chunks", [1, 2, 3])
@pytest.mark.parametrize("flavour", ["clip_l", "open_clip"])
def test_chunk_layout_matches_kohya(request, flavour, num_chunks):
    tokenizer = request.getfixturevalue(flavour)
    got = tokenize_chunks(tokenizer, CAPTIONS, num_chunks)
    assert got.dtype == np.int32 and got.shape == (len(CAPTIONS), 77 * num_chunks)
    for row, caption in zip(got, CAPTIONS):
        np.testing.assert_array_equal(row, _kohya_training_chunks(tokenizer, caption, num_chunks))


def test_chunk_layout_examples(clip_l, open_clip):
    short_l = tokenize_chunks(clip_l, ["a cat"], 2).reshape(2, 77)
    assert list(short_l[0, :4]) == [BOS, 320, 2368, EOS] and set(short_l[0, 4:]) == {EOS}
    assert short_l[1, 0] == BOS and set(short_l[1, 1:]) == {EOS}
    short_g = tokenize_chunks(open_clip, ["a cat"], 2).reshape(2, 77)
    assert list(short_g[0, :4]) == [BOS, 320, 2368, EOS] and set(short_g[0, 4:]) == {0}
    assert list(short_g[1, :2]) == [BOS, EOS] and set(short_g[1, 2:]) == {0}  # empty chunk: BOS EOS pad...
    full = tokenize_chunks(open_clip, [" ".join(["cat"] * 250)], 3).reshape(3, 77)
    assert all(full[k, 0] == BOS and full[k, -1] == EOS and set(full[k, 1:76]) == {2368} for k in range(3))


def test_make_tokenize_fn(clip_l, open_clip):
    tokenize = make_tokenize_fn([clip_l, open_clip], 225)
    out = tokenize(["a cat", "a dog"])
    assert [a.shape for a in out] == [(2, 231), (2, 231)]
    assert make_tokenize_fn(clip_l)(["a cat"])[0].shape == (1, 77)
    with pytest.raises(UserError, match="--max_token_length"):
        make_tokenize_fn(clip_l, 100)


def test_weighted_tokens_and_chunks(clip_l):
    ids, weights = tokenize_weighted(clip_l, ["a (cat:1.5) on [a mat]", "plain"], 1)
    assert ids.shape == weights.shape == (2, 77) and weights.dtype == np.float32
    plain_ids = clip_l("a cat on a mat")["input_ids"]
    assert list(ids[0, :len(plain_ids)]) == plain_ids
    np.testing.assert_allclose(weights[0, :7], [1, 1, 1.5, 1, 1 / 1.1, 1 / 1.1, 1], rtol=1e-6)
    assert np.all(weights[0, 7:] == 1) and np.all(weights[1] == 1)


def test_weighted_chunk_count_and_long_prompts(clip_l):
    long_prompt = "(" + " ".join(["cat"] * 100) + ":0.5)"
    assert chunks_needed(clip_l, ["a cat", long_prompt], 3) == 2
    assert chunks_needed(clip_l, [" ".join(["cat"] * 75)], 3) == 1
    assert chunks_needed(clip_l, [" ".join(["cat"] * 500)], 3) == 3
    ids, weights = tokenize_weighted(clip_l, [long_prompt], 2)
    chunks, chunk_weights = ids.reshape(2, 77), weights.reshape(2, 77)
    assert list(chunks[:, 0]) == [BOS, BOS] and list(chunks[:, -1]) == [EOS, EOS]
    assert np.all(chunk_weights[0, 1:76] == 0.5) and np.all(chunk_weights[1, 1:26] == 0.5)
    assert chunk_weights[0, 0] == chunk_weights[1, 26] == 1.0


def test_expand_embedding_tokens():
    text = "(myemb:1.2), myembs, myemb on a table, other"
    assert (expand_embedding_tokens(text, {"myemb": 3, "other": 1})
            == "(myemb myemb1 myemb2:1.2), myembs, myemb myemb1 myemb2 on a table, other")
