"""Textual-inversion token strings: adding, refusing, init ids, whole-word replacement, templates."""
import random

import numpy as np
import pytest

from library.errors import UserError
from library.text import templates
from library.text.tokenizer import load_clip_tokenizer
from library.text.token_strings import (add_token_string, caption_transform, captions_mention_token, init_ids,
                                        missing_token_warning, replace_token_string, token_strings)


@pytest.fixture
def pair():
    return [load_clip_tokenizer("eos"), load_clip_tokenizer("!")]


def test_adds_consecutive_ids_on_every_tokenizer(pair):
    ids = add_token_string(pair, "mytoy", 3)
    assert ids == [49408, 49409, 49410]
    for tokenizer in pair:
        assert tokenizer.convert_tokens_to_ids(["mytoy", "mytoy1", "mytoy2"]) == ids
        assert tokenizer("a photo of mytoy mytoy1 mytoy2")["input_ids"][4:7] == ids
        assert tokenizer("MyToy")["input_ids"][1] == 49408  # the tokenizer lowercases, so T matches any case


def test_added_tokens_match_whole_words_only(pair):
    add_token_string(pair[0], "mytoy", 1)
    ids = pair[0]("mytoys and xmytoy but mytoy,")["input_ids"]
    assert ids.count(49408) == 1 and ids[-3] == 49408


def test_refuses_known_word_and_duplicates(pair):
    with pytest.raises(UserError, match=r"--token_string.*'cat'.*id 2368"):
        add_token_string(pair, "cat", 1)
    add_token_string(pair, "mytoy", 2)
    with pytest.raises(UserError, match="--token_string.*already an added token"):
        add_token_string(pair, "MYTOY", 1)
    with pytest.raises(UserError, match="--token_string"):
        add_token_string(pair, "two words", 1)
    with pytest.raises(UserError, match="--num_vectors_per_token"):
        add_token_string(pair, "other", 0)


def test_refusal_leaves_every_tokenizer_unchanged(pair):
    pair[1].add_tokens(["clash1"])  # only the second tokenizer has a clash
    with pytest.raises(UserError):
        add_token_string(pair, "clash", 2)
    assert len(pair[0]) == 49408


def test_init_ids_cycle_over_vectors(pair):
    toy = pair[0].convert_tokens_to_ids("toy</w>")
    assert init_ids(pair[0], "toy", 3) == [toy, toy, toy]
    two = pair[0]("stuffed toy", add_special_tokens=False)["input_ids"]
    assert len(two) == 2 and init_ids(pair[0], "stuffed toy", 5) == [two[0], two[1], two[0], two[1], two[0]]
    assert init_ids(pair[0], "stuffed toy", 1) == [two[0]]


def test_init_word_errors_name_the_option(pair):
    for bad in ("", "   ", None):
        with pytest.raises(UserError, match="--init_word"):
            init_ids(pair[0], bad, 2)
    add_token_string(pair[0], "mytoy", 1)
    with pytest.raises(UserError, match="--init_word"):
        init_ids(pair[0], "mytoy", 1)


def test_whole_word_replacement_differs_from_kohya_substring_replace():
    text = "a photo of mytoy, mytoys and xmytoy near MyToy"
    ours = replace_token_string(text, "mytoy", 3)
    assert ours == "a photo of mytoy mytoy1 mytoy2, mytoys and xmytoy near mytoy mytoy1 mytoy2"
    kohya = text.replace("mytoy", "mytoy mytoy1 mytoy2")  # kohya's behaviour also hits the longer words
    assert "mytoy mytoy1 mytoy2s" in kohya and "mytoy mytoy1 mytoy2s" not in ours


def test_replacement_is_idempotent_and_noop_for_one_vector():
    once = replace_token_string("mytoy on a table", "mytoy", 2)
    assert replace_token_string(once, "mytoy", 2) == once == "mytoy mytoy1 on a table"
    assert replace_token_string("mytoy on a table", "mytoy", 1) == "mytoy on a table"
    assert replace_token_string("(<cat-toy>:1.2)", "<cat-toy>", 2) == "(<cat-toy> <cat-toy>1:1.2)"


def test_token_strings_names():
    assert token_strings("T", 1) == ["T"] and token_strings("T", 3) == ["T", "T1", "T2"]


def test_template_counts():
    assert len(templates.OBJECT) == 27 and len(set(templates.OBJECT)) == 27
    assert len(templates.STYLE) == 19 and len(set(templates.STYLE)) == 17  # the classic list repeats two
    assert templates.OBJECT[0] == "a photo of a {}" and templates.STYLE[0] == "a painting in the style of {}"
    assert all(t.count("{}") == 1 for t in templates.OBJECT + templates.STYLE + templates.FACE)
    with pytest.raises(UserError, match="--learnable_property"):
        templates.get_templates("animal")


def test_caption_transform_templates_use_the_given_rng():
    transform = caption_transform("mytoy", 2, "object")
    first = [transform("ignored caption", random.Random(7)) for _ in range(2)]
    assert first[0] == first[1]  # same seed, same template
    picks = {transform("x", np.random.default_rng(seed)) for seed in range(40)}
    assert len(picks) > 10 and all(p in {t.format("mytoy mytoy1") for t in templates.OBJECT} for p in picks)
    face = caption_transform("mytoy", 1, "face")("x", random.Random(0))
    assert face in {t.format("mytoy") for t in templates.FACE}


def test_caption_transform_without_template_expands_captions():
    transform = caption_transform("mytoy", 3)
    assert transform("mytoy on a table", None) == "mytoy mytoy1 mytoy2 on a table"
    assert transform("a photo of a toy", None) == "a photo of a toy"


def test_captions_mention_token():
    assert captions_mention_token(["a toy", "MyToy on a table"], "mytoy")
    assert not captions_mention_token(["a toy", "mytoys", None, ""], "mytoy")


def test_missing_token_warning():
    message = missing_token_warning(["a photo of a toy"], "mytoy")
    assert "mytoy" in message and "--use_object_template" in message
    assert missing_token_warning(["a photo of a toy"], "mytoy", template="object") is None
    assert missing_token_warning(["a photo of mytoy"], "mytoy") is None


def test_option_name_in_messages_for_gen_img(pair):
    with pytest.raises(UserError, match="--textual_inversion_embeddings"):
        add_token_string(pair, "cat", 2, option="--textual_inversion_embeddings")
