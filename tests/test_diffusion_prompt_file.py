"""kohya sample-prompt files (.txt/.toml/.json) and in-line prompt options."""
import json

import pytest

from library.diffusion.prompt_file import load_prompt_file, parse_prompt_line, resolve_prompt_settings
from library.errors import UserError


def test_inline_options_parse_to_kohya_keys():
    got = parse_prompt_line("a photo of sks dog, (masterpiece:1.2) --n low quality, blurry --w 768 --h 520 "
                            "--d 42 --s 20 --l 5.5 --ss k_euler_a --am 0.5,-1 --nl 3")
    assert got == {
        "prompt": "a photo of sks dog, (masterpiece:1.2)",
        "negative_prompt": "low quality, blurry",
        "width": 768, "height": 520, "seeds": [42], "seed": 42, "sample_steps": 20, "scale": 5.5,
        "sample_sampler": "k_euler_a", "network_multipliers": [0.5, -1.0], "negative_scale": 3.0,
    }


def test_seed_list_steps_clamp_and_sdxl_options():
    got = parse_prompt_line("x --d 1,2,3 --s 5000 --ow 1024 --oh 768 --ct 16 --cl 8 --f out")
    assert got["seeds"] == [1, 2, 3] and got["seed"] == 1 and got["sample_steps"] == 1000
    assert (got["original_width"], got["original_height"], got["crop_top"], got["crop_left"]) == (1024, 768, 16, 8)
    assert got["filename"] == "out"


def test_unknown_option_is_ignored_with_a_warning(caplog):
    got = parse_prompt_line("a cat --cn hint.png --w 64")
    assert got == {"prompt": "a cat", "width": 64}
    assert "--cn hint.png" in caplog.text


def test_txt_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# a comment\n\nfirst --d 3\n  second --n bad  \n", encoding="utf-8")
    prompts = load_prompt_file(str(path))
    assert [p["prompt"] for p in prompts] == ["first", "second"]
    assert prompts[0]["seed"] == 3 and prompts[1]["negative_prompt"] == "bad"
    assert [p["enum"] for p in prompts] == [0, 1]


def test_toml_defaults_and_subsets(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[prompt]\nwidth = 640\nsample_steps = 12\nnegative_prompt = "ugly"\n'
                    '[[prompt.subset]]\nprompt = "one"\n'
                    '[[prompt.subset]]\nprompt = "two"\nwidth = 320\nseed = 9\n', encoding="utf-8")
    one, two = load_prompt_file(str(path))
    assert one == {"prompt": "one", "width": 640, "sample_steps": 12, "negative_prompt": "ugly", "enum": 0}
    assert two["width"] == 320 and two["seed"] == 9 and two["negative_prompt"] == "ugly"


def test_json_list_of_strings_and_dicts(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["a --w 128", {"prompt": "b", "scale": 4}]), encoding="utf-8")
    a, b = load_prompt_file(str(path))
    assert a["width"] == 128 and b == {"prompt": "b", "scale": 4, "enum": 1}


def test_bad_files_give_clear_messages(tmp_path):
    with pytest.raises(UserError, match="missing.txt"):
        load_prompt_file(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[prompt\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.toml"):
        load_prompt_file(str(bad))
    no_subset = tmp_path / "ns.toml"
    no_subset.write_text("[prompt]\nwidth = 3\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\[\[prompt.subset\]\]"):
        load_prompt_file(str(no_subset))


def test_resolved_settings_round_sizes_and_fill_defaults():
    got = resolve_prompt_settings({"prompt": "p", "width": 100, "height": 30}, sampler="ddim")
    assert got == {"prompt": "p", "negative_prompt": "", "width": 96, "height": 64, "sample_steps": 30,
                   "scale": 7.5, "seed": None, "sample_sampler": "ddim"}
