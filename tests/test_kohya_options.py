"""kohya sd-scripts' options in our three scripts (issue 15): every kohya option name goes through each parser and
comes out parsed, ignored with exactly one printed line, or refused with one message naming it; refusals come
before any model loads; --config_file keys take the same path (GUI bookkeeping skipped with one warning); the
options table in docs/*/differences_from_kohya.md is what the generator writes; a kohya_ss-GUI TOML trains.
"""
import logging
import os

import numpy as np
import pytest
import toml
from mindspore import Tensor, nn

import train_network
import train_textual_inversion
from library.checkpoints.tiny import ensure_tiny_checkpoint
from library.config import kohya_options as K
from library.diffusion.samplers import resolve_sampler
from library.errors import UserError
from library.sampling import cli as gen_img_cli
from library.training import session

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
SCRIPTS = ("train_network", "train_textual_inversion", "gen_img")


def parse(script, argv):
    if script == "gen_img":
        return gen_img_cli.parse_arguments(["--ckpt", "model.safetensors"] + argv)
    parser = train_network.build_parser() if script == "train_network" else train_textual_inversion.build_parser()
    return session.parse_arguments(parser, argv)


@pytest.fixture
def clean_logging(tmp_path, monkeypatch):
    """--console_log_file adds a root handler and --console_log_level sets the root level: undo both."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


# ------------------------------------------------------------------------------------------ the table
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_committed_options_table_is_the_generated_one(lang):
    with open(K.doc_path(lang), encoding="utf-8") as f:
        text = f.read()
    assert K.render_doc(text, lang, K.our_parsers()) == text, (
        f"docs/{lang}/differences_from_kohya.md is out of date: python -m library.config.kohya_options "
        f"--markdown {lang}")


def test_every_kohya_option_is_defined_or_ignored_or_refused():
    parsers = K.our_parsers()
    problems = []
    for script, parser in parsers.items():
        for dest in K.kohya_options(script):
            status, detail = K.option_status(parser, script, dest)
            if status == "unhandled":
                problems.append(f"{script} --{dest}: neither defined nor ignored/refused {detail}")
    assert not problems, "\n".join(problems)
    # an option we define takes what kohya's takes: the same number of values and (at least) kohya's choices
    for script, parser in parsers.items():
        for option, action in K.defined_options(parser).items():
            spec = K.kohya_options(script).get(option[2:])
            if spec is None:
                continue
            kohya_nargs = 0 if spec["type"] == "flag" else spec.get("nargs")
            if (action.nargs or None) != (kohya_nargs or None) or (action.nargs == 0) != (kohya_nargs == 0):
                problems.append(f"{script} {option}: nargs {action.nargs!r}, kohya {kohya_nargs!r}")
            kohya_choices = set(spec.get("choices") or []) - {None}
            missing = kohya_choices - set(action.choices or kohya_choices)  # no choices: free-form, checked later
            if missing:
                problems.append(f"{script} {option}: kohya's values {sorted(missing)} are not accepted")
    assert not problems, "\n".join(problems)
    for script, option in (("train_network", "sample_sampler"), ("gen_img", "sampler")):  # free-form, checked early
        for name in K.kohya_options(script)[option]["choices"]:
            resolve_sampler(name, option=f"--{option}")
    # the registries name real kohya options, each in one registry, and every refusal says why
    known = K.all_kohya_option_names()
    registries = [set(K.IGNORED), set(K.REFUSED), set(K.ALIASES)]
    for registry in registries:
        assert registry <= known, registry - known
    for i, a in enumerate(registries):
        for b in registries[i + 1:]:
            assert not a & b, a & b
    assert all(len(message) > 20 for message in list(K.REFUSED.values()) + list(K.IGNORED.values()))
    # no stale entries: each ignored/refused/alias name is still hidden in at least one script
    hidden = set().union(*(parser.kohya_hidden for parser in parsers.values()))
    stale = (set(K.IGNORED) | set(K.REFUSED) | set(K.ALIASES)) - hidden
    assert not stale, f"every script defines {sorted(stale)}: drop them from the ignored/refused sets"


# ------------------------------------------------------------------------------------------ every name
def _value(spec):
    """A valid value that differs from kohya's default (so the option counts as given)."""
    default, kind = spec["default"], spec["type"]
    if spec.get("choices"):
        return str([c for c in spec["choices"] if c is not None and c != default][-1])
    if kind == "int":
        return str((default or 0) + 1)
    if kind == "float":
        return str((default or 0) + 0.5)
    if kind == "int_or_float":
        return "0.5"
    return "x"


def _argv(dest, spec):
    if spec["type"] == "flag":
        return [f"--{dest}"]
    return [f"--{dest}"] + [_value(spec)] * (spec.get("nargs") if isinstance(spec.get("nargs"), int) else 1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_kohya_option_name_through_the_parser(script, capsys, clean_logging):
    parser = K.our_parsers()[script]
    failures = []
    for dest, spec in K.kohya_options(script).items():
        argv = _argv(dest, spec)
        status, _ = K.option_status(parser, script, dest)
        try:
            args = parse(script, argv)
            error = None
        except UserError as e:
            error = str(e)
        except SystemExit as e:  # argparse's usage dump: the one outcome that must never happen
            failures.append(f"{argv}: argparse exit {e.code}: {capsys.readouterr().err[-300:]}")
            continue
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"--{dest}:")]
        if error is not None:
            if f"--{dest}" not in error:
                failures.append(f"{argv}: the error does not name the option: {error}")
        elif status == "ignored":
            if len(lines) != 1 or "ignored" not in lines[0]:
                failures.append(f"{argv}: expected exactly one 'ignored' line, got {lines}")
        elif status == "refused":
            failures.append(f"{argv}: refused option accepted")
        elif lines:
            failures.append(f"{argv}: {status} option printed {lines}")
        elif status == "alias":
            target, value = K.ALIASES[dest] if dest in K.ALIASES else (None, None)
            if target and getattr(args, target) != value:
                failures.append(f"{argv}: --{target} is {getattr(args, target)!r}, expected {value!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("script", ["train_network", "train_textual_inversion"])
def test_unused_values_in_a_gui_file_never_fail_or_print(script, tmp_path, capsys, caplog, clean_logging):
    """The GUI writes false / "" / [] / kohya's default for what is off: no line, no error, for every option."""
    parser = K.our_parsers()[script]
    hidden = sorted(parser.kohya_hidden)
    values = {}
    for dest in hidden:
        spec = K.kohya_options(script)[dest]
        values[dest] = (False if spec["type"] == "flag" else [] if spec.get("nargs") == "*"
                        else "" if spec["default"] is None else spec["default"])
    path = tmp_path / "gui.toml"
    path.write_text(toml.dumps(values), encoding="utf-8")
    parse(script, ["--config_file", str(path)])
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("--")]
    assert "skipping" not in caplog.text


# ------------------------------------------------------------------------------------------ --config_file
def test_config_file_keys_take_the_command_line_path(tmp_path, capsys, caplog, clean_logging):
    path = tmp_path / "c.toml"

    def load(text, script="train_network"):
        path.write_text(text, encoding="utf-8")
        caplog.clear()
        args = parse(script, ["--config_file", str(path)])
        return args, capsys.readouterr().err

    # a refused kohya option is refused from a file as on the command line
    with pytest.raises(UserError, match="--full_fp16"):
        load("full_fp16 = true\n")
    # an ignored one prints its one line; GUI bookkeeping and other model families' keys are skipped with one
    # warning naming them
    args, err = load('xformers = true\nepoch = 4\nnoise_offset_type = "Original"\nclip_l = "c.safetensors"\n'
                     'learning_rate = 0.001\n')
    assert [line for line in err.splitlines() if line.startswith("--xformers:")] == [
        "--xformers: ignored here; " + K.IGNORED["xformers"]]
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and all(k in skipped[0] for k in ("epoch", "noise_offset_type", "clip_l"))
    assert args.learning_rate == 0.001
    # another kohya script's option is not ours, as on the command line
    with pytest.raises(UserError, match="token_string is an option of kohya's sdxl_train_textual_inversion.py, "
                                        "train_textual_inversion.py, not of train_network.py"):
        load('token_string = "mytoy"\n')
    # a near miss of one of our options is a typo; kohya option names never get a misleading suggestion
    with pytest.raises(UserError, match="did you mean `learning_rate`"):
        load("learning_rat = 0.1\n")
    load('lr_scheduler_type = ""\nvalidate_every_n_steps = 0\n')
    # kohya's spellings and the values kohya_ss GUI files carry
    args, err = load('caption_extention = ".txt"\npersistent_data_loader_workers = 1\nbucket_reso_steps = 64.0\n'
                     'max_token_length = 75\nnetwork_args = []\ntext_encoder_lr = [5e-5, 5e-5]\nvae = ""\n'
                     'use_lion_optimizer = true\n')
    assert args.caption_extension == ".txt" and args.bucket_reso_steps == 64 and isinstance(args.bucket_reso_steps,
                                                                                             int)
    assert args.max_token_length is None and args.network_args is None and args.vae is None
    assert args.text_encoder_lr == [5e-5, 5e-5] and args.optimizer_type == "Lion"
    assert "--persistent_data_loader_workers: ignored here" in err
    with pytest.raises(UserError, match="max_token_length"):
        load("max_token_length = 100\n")


def test_deprecated_optimizer_aliases(clean_logging):
    assert parse("train_network", ["--use_lion_optimizer"]).optimizer_type == "Lion"
    assert parse("train_network", ["--use_lion_optimizer", "--optimizer_type", "Lion"]).optimizer_type == "Lion"
    with pytest.raises(UserError, match="--use_lion_optimizer means --optimizer_type Lion"):
        parse("train_network", ["--use_lion_optimizer", "--optimizer_type", "SGD"])


def test_console_log_options(tmp_path, clean_logging):
    log_file = tmp_path / "run.log"
    parse("train_textual_inversion", ["--console_log_file", str(log_file), "--console_log_level", "DEBUG"])
    logging.getLogger("sdms.test").debug("a debug line")
    parse("gen_img", ["--console_log_level", "ERROR"])
    logging.getLogger("sdms.test").warning("not at level ERROR")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text(encoding="utf-8")
    assert "DEBUG a debug line" in text and "not at level ERROR" not in text


# ------------------------------------------------------------------------------------------ before loading
LORA = ["--pretrained_model_name_or_path", "tiny-sd15", "--dataset_config",
        os.path.join(EXAMPLES, "dataset_lora.toml")]
TI = ["--pretrained_model_name_or_path", "tiny-sd15", "--dataset_config", os.path.join(EXAMPLES, "dataset_ti.toml"),
      "--token_string", "mytoy", "--init_word", "toy"]
REFUSALS = [
    (train_network, LORA + ["--optimizer_type", "Prodigy"], "issue 16"),
    (train_network, LORA + ["--optimizer_type", "AdamW8bit"], "bitsandbytes"),
    (train_network, LORA + ["--use_8bit_adam"], "--use_8bit_adam"),
    (train_network, LORA + ["--optimizer_args", "betas=0.9,0.99", "foo=1"], "--optimizer_args"),
    (train_network, LORA + ["--optimizer_args", "weight_decay=much"], "--optimizer_args"),
    (train_network, LORA + ["--lr_scheduler", "bogus"], "--lr_scheduler"),
    (train_network, LORA + ["--lr_scheduler", "constant", "--lr_warmup_steps", "10"], "--lr_scheduler"),
    (train_network, LORA + ["--network_module", "lycoris.kohya"], "issue 17"),
    (train_network, LORA + ["--network_args", "algo=lokr"], "--network_args"),
    (train_network, LORA + ["--network_args", "down_lr_weight=1,1,1"], "issue 17"),
    (train_network, LORA + ["--full_bf16"], "--full_bf16"),
    (train_network, LORA + ["--cache_text_encoder_outputs"], "issue 19"),
    (train_network, LORA + ["--log_with", "wandb"], "--log_with wandb"),
    (train_network, LORA + ["--sample_prompts", "missing.txt"], "--sample_prompts"),
    (train_network, LORA + ["--sample_sampler", "bogus"], "--sample_sampler"),
    (train_network, LORA + ["--resume", "missing-state"], "--resume"),
    (train_network, LORA + ["--network_weights", "missing.safetensors"], "--network_weights"),
    (train_network, LORA + ["--cache_latents", "--random_crop"], "random_crop"),
    (train_textual_inversion, TI + ["--optimizer_type", "DAdaptAdam"], "issue 16"),
    (train_textual_inversion, TI + ["--weights", "missing.safetensors"], "--weights"),
    (train_textual_inversion, TI + ["--caption_dropout_rate", "0.1"], "unrecognized"),  # argparse, LoRA-only option
    (gen_img_cli, ["--ckpt", "m.safetensors", "--prompt", "a", "--highres_fix_scale", "2"], "issue 18"),
    (gen_img_cli, ["--ckpt", "m.safetensors", "--prompt", "a", "--image_path", "x.png", "--strength", "0.5"],
     "img2img"),
    (gen_img_cli, ["--ckpt", "m.safetensors", "--prompt", "a", "--network_module", "networks.lokr",
                   "--network_weights", "x.safetensors"], "issue 17"),
]


@pytest.mark.parametrize("module,argv,expected", REFUSALS, ids=[" ".join(r[1][-2:]) for r in REFUSALS])
def test_refused_before_the_model_loads(module, argv, expected, tmp_path, monkeypatch, clean_logging, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(session, "load_model", no_loading)
    monkeypatch.setattr(gen_img_cli, "_load_bundle", no_loading)
    out = tmp_path / "out"
    outdir = ["--outdir", str(out)] if module is gen_img_cli else ["--output_dir", str(out)]
    if expected == "unrecognized":  # not a kohya option of this script: an unknown option, as in kohya
        with pytest.raises(UserError, match="^unknown option --caption_dropout_rate$"):
            module.main(argv + outdir)
        return
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        module.main(argv + outdir)
    assert not out.exists() or module is gen_img_cli  # trainers refuse before creating the output folder


def test_loading_is_reached_without_a_bad_option(tmp_path, monkeypatch, clean_logging):
    """The control for the test above: the stub is on the path, so a refusal there really came first."""
    def no_loading(*args, **kwargs):
        raise AssertionError("loading")

    monkeypatch.setattr(session, "load_model", no_loading)
    with pytest.raises(AssertionError, match="loading"):
        train_network.main(LORA + ["--output_dir", str(tmp_path / "out"), "--use_lion_optimizer", "--xformers",
                                   "--optimizer_args", "weight_decay=0.1", "betas=0.9,0.99"])


# ------------------------------------------------------------------------------------------ a GUI TOML
# What kohya_ss GUI's lora_gui.py writes into config_lora-*.toml for an SD1.5 "Standard" LoRA: every key its
# config_toml_data dict holds that is not None for SD1.5 (the SD3/Flux/Hunyuan/... keys are None then). Values
# from presets/lora/sd15 - EDG_LoraOptiSettings.json, except AdamW for AdamW8bit (issue 16), a tiny model and 4
# steps; bucket sizes come from the dataset TOML.
def lora_gui_values(root):
    return {
        "adaptive_noise_scale": None, "async_upload": False, "bucket_no_upscale": True, "bucket_reso_steps": 64,
        "cache_latents": True, "cache_latents_to_disk": False, "caption_dropout_every_n_epochs": 0,
        "caption_dropout_rate": 0, "caption_extension": ".txt", "clip_skip": 2, "color_aug": False,
        "dataset_config": os.path.join(EXAMPLES, "dataset_lora.toml"), "debiased_estimation_loss": False,
        "dynamo_backend": "no", "dim_from_weights": False, "enable_bucket": True, "epoch": 1, "flip_aug": False,
        "fp8_base": False, "full_bf16": False, "full_fp16": False, "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False, "highvram": False, "huber_c": 0.1, "huber_scale": 1,
        "huber_schedule": "snr", "huggingface_repo_id": "", "huggingface_token": "", "huggingface_repo_type": "",
        "huggingface_repo_visibility": "", "huggingface_path_in_repo": "", "ip_noise_gamma": None,
        "ip_noise_gamma_random_strength": False, "keep_tokens": 0, "learning_rate": 0.0001, "logging_dir": "",
        "log_config": False, "log_tracker_name": "", "log_tracker_config": "", "loss_type": "l2",
        "lr_scheduler": "constant", "lr_scheduler_args": [], "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1,
        "lr_scheduler_type": None, "lr_warmup_steps": 0, "masked_loss": False, "max_bucket_reso": 2048,
        "max_grad_norm": 1, "max_timestep": 1000, "max_token_length": 75, "max_train_epochs": None,
        "max_train_steps": 4, "mem_eff_attn": True, "metadata_author": "", "metadata_description": "",
        "metadata_license": "", "metadata_tags": "", "metadata_title": "", "min_bucket_reso": 256,
        "min_snr_gamma": None, "min_timestep": None, "mixed_precision": "bf16", "multires_noise_discount": None,
        "multires_noise_iterations": None, "network_alpha": 64, "network_args": [], "network_dim": 64,
        "network_dropout": 0, "network_module": "networks.lora", "network_train_unet_only": False,
        "network_train_text_encoder_only": False, "network_weights": "", "no_half_vae": None, "noise_offset": 0.05,
        "noise_offset_random_strength": False, "noise_offset_type": "Original", "optimizer_type": "AdamW",
        "optimizer_args": [], "output_dir": str(root / "out"), "output_name": "gui_lora",
        "persistent_data_loader_workers": 0, "pretrained_model_name_or_path": str(root / "tiny-sd15.safetensors"),
        "prior_loss_weight": 1, "random_crop": False, "reg_data_dir": "", "resolution": "512,512", "resume": "",
        "resume_from_huggingface": False, "sample_every_n_epochs": None, "sample_every_n_steps": None,
        "sample_prompts": str(root / "out" / "sample" / "prompt.txt"), "sample_sampler": "euler_a",
        "save_every_n_epochs": 1, "save_every_n_steps": None, "save_last_n_steps": None,
        "save_last_n_steps_state": None, "save_last_n_epochs": None, "save_last_n_epochs_state": None,
        "save_model_as": "safetensors", "save_precision": "bf16", "save_state": False,
        "save_state_on_train_end": False, "save_state_to_huggingface": False,
        "scale_v_pred_loss_like_noise_pred": False, "scale_weight_norms": 0, "sdpa": None, "seed": 1234,
        "shuffle_caption": False, "skip_cache_check": False, "stop_text_encoder_training": None,
        "text_encoder_lr": [5e-05, 5e-05], "train_batch_size": 3, "train_data_dir": "", "train_inpainting": False,
        "training_comment": "", "unet_lr": 0.0001, "log_with": "", "v2": False, "v_parameterization": False,
        "v_pred_like_loss": None, "vae": "", "vae_batch_size": None, "wandb_api_key": "",
        "wandb_run_name": "gui_lora", "weighted_captions": False, "xformers": True,
    }


def gui_toml(values):
    """lora_gui.py's own last steps: drop "", False and None, always add max_data_loader_n_workers, sort."""
    kept = {k: v for k, v in values.items() if v not in ["", False, None]}
    kept["max_data_loader_n_workers"] = 0
    return toml.dumps(dict(sorted(kept.items())))


@pytest.fixture(scope="module")
def gui_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui")
    ensure_tiny_checkpoint("tiny-sd15", root / "tiny-sd15.safetensors")
    os.makedirs(root / "out" / "sample")
    (root / "out" / "sample" / "prompt.txt").write_text("", encoding="utf-8")  # the GUI writes the file
    return root


def test_every_key_an_older_gui_writes_passes_the_checks(gui_root, monkeypatch, capsys, clean_logging):
    """Older GUI versions wrote every key, false/0/"" included: all of it parses and passes the checks that
    run before loading (the run itself is the next test)."""
    path = gui_root / "all_keys.toml"
    path.write_text(toml.dumps({k: v for k, v in lora_gui_values(gui_root).items() if v is not None}),
                    encoding="utf-8")

    def stop(*args, **kwargs):
        raise AssertionError("reached loading")

    monkeypatch.setattr(session, "load_model", stop)
    with pytest.raises(AssertionError, match="reached loading"):
        train_network.main(["--config_file", str(path)])


def test_kohya_ss_gui_lora_toml_trains(gui_root, capsys, caplog):
    path = gui_root / "config_lora-20250101-120000.toml"
    path.write_text(gui_toml(lora_gui_values(gui_root)), encoding="utf-8")
    assert train_network.main(["--config_file", str(path)]) == 0
    assert os.path.isfile(gui_root / "out" / "gui_lora.safetensors")
    err = capsys.readouterr().err
    for option in ("xformers", "mem_eff_attn", "max_data_loader_n_workers", "dynamo_backend", "wandb_run_name"):
        assert len([line for line in err.splitlines() if line.startswith(f"--{option}: ignored here")]) == 1
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "epoch" in skipped[0] and "noise_offset_type" in skipped[0]


def test_kohya_ss_gui_textual_inversion_toml(gui_root, capsys):
    """textual_inversion_gui.py's keys for SD1.5 (falsy ones dropped as the GUI does), up to the dataset
    (--debug_dataset: no training graph to compile)."""
    values = {
        "bucket_no_upscale": True, "bucket_reso_steps": 64, "cache_latents": True, "caption_extension": ".txt",
        "dataset_config": os.path.join(EXAMPLES, "dataset_ti.toml"), "dynamo_backend": "no", "enable_bucket": True,
        "epoch": 1, "gradient_accumulation_steps": 1, "huber_c": 0.1, "huber_scale": 1, "huber_schedule": "snr",
        "init_word": "toy", "learning_rate": 0.005, "loss_type": "l2", "lr_scheduler": "cosine",
        "lr_scheduler_args": [], "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1, "lr_warmup_steps": 1,
        "max_bucket_reso": 2048, "max_timestep": 1000, "max_token_length": 75, "max_train_steps": 3,
        "min_bucket_reso": 256, "mixed_precision": "fp16", "multires_noise_discount": 0.3,
        "noise_offset_type": "Original", "num_vectors_per_token": 2, "optimizer_args": [], "optimizer_type": "AdamW",
        "output_dir": str(gui_root / "outti"), "output_name": "mytoy",
        "pretrained_model_name_or_path": str(gui_root / "tiny-sd15.safetensors"), "prior_loss_weight": 1,
        "resolution": "512,512", "sample_prompts": str(gui_root / "out" / "sample" / "prompt.txt"),
        "sample_sampler": "euler_a", "save_every_n_epochs": 1, "save_model_as": "safetensors",
        "save_precision": "fp16", "sdpa": True, "seed": 1234, "token_string": "mytoy", "train_batch_size": 1,
        "wandb_run_name": "mytoy", "max_data_loader_n_workers": 0,
    }
    path = gui_root / "config_textual_inversion.toml"
    path.write_text(toml.dumps(values), encoding="utf-8")
    assert train_textual_inversion.main(["--config_file", str(path), "--debug_dataset"]) == 0
    out = capsys.readouterr()
    assert "token ids of 'mytoy'" in out.out
    assert "--sdpa: ignored here" in out.err


class _LossProbe(nn.Cell):
    """The loss half of the training objective, in a compiled graph: (prediction, target, timesteps) -> loss."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def construct(self, prediction, target, timesteps, loss_weights):
        return self.targets(prediction, target, timesteps, loss_weights, None)


def test_gui_toml_loss_type_reaches_the_loss(gui_root, clean_logging):
    """The same GUI TOML with loss_type = "huber" trains with another loss than with "l2": the file's values go
    through the trainer's parser into the loss Cell the objective is built with (method.diffusion_targets),
    and each gives kohya's formula (huber_schedule snr, huber_c 0.1 from the file)."""
    from library.diffusion.schedule import make_schedule
    from library.training.method import diffusion_targets

    rng = np.random.default_rng(0)
    prediction, target = (rng.standard_normal((2, 4, 8, 8)).astype(np.float32) for _ in range(2))
    timesteps = np.array([10, 900], np.int32)
    losses = {}
    for loss_type in ("l2", "huber"):
        path = gui_root / f"config_{loss_type}.toml"
        path.write_text(gui_toml({**lora_gui_values(gui_root), "loss_type": loss_type}), encoding="utf-8")
        args = session.parse_arguments(train_network.build_parser(), ["--config_file", str(path)])
        assert (args.loss_type, args.huber_schedule, args.huber_c) == (loss_type, "snr", 0.1)
        probe = _LossProbe(diffusion_targets(args, v_prediction=False))
        losses[loss_type] = float(probe(Tensor(prediction), Tensor(target), Tensor(timesteps),
                                        Tensor(np.ones(2, np.float32))).asnumpy())
    diff = (prediction - target).astype(np.float64)
    alphas = make_schedule().alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    c = (1 - 0.1) / (1 + np.sqrt((1 - alphas) / alphas)) ** 2 + 0.1  # kohya's snr huber schedule
    huber = (2 * c * (np.sqrt(diff ** 2 + c ** 2) - c)).mean()
    np.testing.assert_allclose(losses["l2"], (diff ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(losses["huber"], huber, rtol=1e-5)
    assert abs(losses["huber"] - losses["l2"]) > 0.1 * losses["l2"]
