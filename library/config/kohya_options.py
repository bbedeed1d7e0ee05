"""kohya sd-scripts' options (v0.10.1) and what our three scripts do with each of them.

A kohya recipe must run unchanged or stop with a reason, never train something else without a word. So every
option of kohya's train_network.py + sdxl_train_network.py, train_textual_inversion.py +
sdxl_train_textual_inversion.py and gen_img.py is accepted by our parser of that script. One it does not
define is added hidden (`add_kohya_options`: out of --help, listed by --help-all), and after parsing
(`apply_kohya_options`), when it is *given* (a value other than kohya's default: GUI files write false/0/""
for unused things, which must not fail):

- IGNORED: a PyTorch-only switch with no meaning here (or an option that only works together with a refused
  one) prints exactly one line saying so and why;
- REFUSED: anything else we do not implement raises one UserError naming it, why, and the alternative or the
  issue that brings it - before any model is loaded;
- ALIASES: kohya's deprecated spellings become the option they stand for (--use_lion_optimizer).

The facts (names, defaults, types per kohya script; keys the kohya_ss GUI writes that are no option of these
scripts) are data: kohya_options_v0.10.1.json next to this file. The options table of
docs/<lang>/differences_from_kohya.md is generated from this module and the parsers:
    python -m library.config.options_table --markdown en   (or zh)
"""
import argparse
import json
import os
import sys

from ..errors import UserError

_DATA = json.load(open(os.path.join(os.path.dirname(__file__), "kohya_options_v0.10.1.json"), encoding="utf-8"))

# Our script -> the kohya scripts it stands for (the SDXL variants map onto the same trainer here).
KOHYA_SCRIPTS = {
    "train_network": ("train_network", "sdxl_train_network"),
    "train_textual_inversion": ("train_textual_inversion", "sdxl_train_textual_inversion"),
    "gen_img": ("gen_img",),
}
# Keys the kohya_ss GUI writes into --config_file TOMLs that are no option of these kohya scripts: GUI
# bookkeeping (`epoch`, `noise_offset_type`) and options of kohya's other trainers (Flux, SD3, train_db...).
GUI_KEYS = frozenset(_DATA["gui_keys_not_options"])


_ATTENTION = "MindSpore picks the attention kernel itself (flash attention on Ascend, see docs/en/devices.md)"
_LOADER = "no PyTorch DataLoader here: batches are prepared in the training process"
_DDP = "a PyTorch DDP setting; several devices run with MindSpore's msrun here (docs/en/devices.md)"
_ONLY_WITH = "only used together with {}, which is refused here"

IGNORED = {
    # trainers
    "xformers": _ATTENTION, "sdpa": _ATTENTION, "mem_eff_attn": _ATTENTION,
    "max_data_loader_n_workers": _LOADER, "persistent_data_loader_workers": _LOADER,
    "lowram": "a PyTorch/CUDA loading strategy; checkpoints are read through safetensors' numpy API here",
    "highvram": "a CUDA memory-management hint with no MindSpore counterpart",
    "torch_compile": "MindSpore always compiles the train step (graph mode; --mode pynative to debug)",
    "dynamo_backend": "a torch.compile backend; MindSpore always compiles the train step (graph mode)",
    "ddp_timeout": _DDP, "ddp_gradient_as_bucket_view": _DDP, "ddp_static_graph": _DDP,
    "disable_mmap_load_safetensors": "safetensors files are read through their numpy API here",
    "cpu_offload_checkpointing": "a CUDA memory option; --gradient_checkpointing recomputes activations here",
    "conditioning_data_dir": "kohya's LoRA and TI trainers do not read it either (only its ControlNet trainers "
                             "do); give conditioning_data_dir in the dataset config, with --masked_loss",
    "fused_backward_pass": "kohya uses it only in its full fine-tuning scripts; LoRA/TI training ignores it "
                           "there too",
    "tokenizer_cache_dir": "the CLIP vocabulary is bundled, nothing is downloaded",
    "log_config": "the arguments are not written to TensorBoard; --output_config writes them to a TOML",
    "log_tracker_name": "TensorBoard events go straight into --logging_dir/<log_prefix><time> here",
    "log_tracker_config": _ONLY_WITH.format("--log_with wandb"),
    "wandb_run_name": _ONLY_WITH.format("--log_with wandb"),
    "wandb_api_key": _ONLY_WITH.format("--log_with wandb"),
    "huggingface_token": _ONLY_WITH.format("--huggingface_repo_id"),
    "huggingface_repo_type": _ONLY_WITH.format("--huggingface_repo_id"),
    "huggingface_path_in_repo": _ONLY_WITH.format("--huggingface_repo_id"),
    "huggingface_repo_visibility": _ONLY_WITH.format("--huggingface_repo_id"),
    "async_upload": _ONLY_WITH.format("--huggingface_repo_id"),
    "zero_stage": _ONLY_WITH.format("--deepspeed"),
    "offload_optimizer_device": _ONLY_WITH.format("--deepspeed"),
    "offload_optimizer_nvme_path": _ONLY_WITH.format("--deepspeed"),
    "offload_param_device": _ONLY_WITH.format("--deepspeed"),
    "offload_param_nvme_path": _ONLY_WITH.format("--deepspeed"),
    "zero3_init_flag": _ONLY_WITH.format("--deepspeed"),
    "zero3_save_16bit_model": _ONLY_WITH.format("--deepspeed"),
    "fp16_master_weights_and_gradients": _ONLY_WITH.format("--deepspeed"),
    # gen_img
    "diffusers_xformers": _ATTENTION,
    "opt_channels_last": "a PyTorch memory-layout switch; MindSpore picks its own layouts",
    "vae_slices": "a CUDA memory option (VAE decoding in slices); the image is the same",
    "vae_batch_size": "a CUDA memory option (VAE decoding in smaller batches); the images are the same",
    "no_preview": _ONLY_WITH.format("--interactive"),
    "network_pre_calc": "a speed option of kohya's LoRA application (same images); --network_merge merges "
                        "the LoRAs into the weights once here",
    "network_show_meta": "the LoRA metadata is not printed (the images are the same)",
}


def _gen_img_feature(what):
    return f"{what} is not available in gen_img.py yet (issue 18)"


REFUSED = {
    # trainers
    "cache_text_encoder_outputs": "caching the text-encoder outputs is not available yet (issue 19); the text "
                                  "encoders run at every step (with --network_train_unet_only they stay frozen)",
    "cache_text_encoder_outputs_to_disk": "caching the text-encoder outputs is not available yet (issue 19)",
    "dataset_class": "a custom PyTorch dataset class cannot run here; describe the data with --dataset_config",
    "deepspeed": "DeepSpeed is PyTorch-only; several devices run with MindSpore's msrun here "
                 "(docs/en/devices.md)",
    "fp8_base": "fp8 base weights need PyTorch's float8 kernels; use --mixed_precision fp16 or bf16",
    "fp8_base_unet": "fp8 base weights need PyTorch's float8 kernels; use --mixed_precision fp16 or bf16",
    "full_fp16": "training fp16 weights without fp32 master copies is not available; --mixed_precision fp16 "
                 "computes in fp16 and keeps the trained weights in fp32 (docs/en/devices.md)",
    "full_bf16": "training bf16 weights without fp32 master copies is not available; --mixed_precision bf16 "
                 "computes in bf16 and keeps the trained weights in fp32 (docs/en/devices.md)",
    "huggingface_repo_id": "uploading to the Hugging Face Hub is not built in; upload the saved file yourself "
                           "(e.g. `huggingface-cli upload`)",
    "save_state_to_huggingface": "uploading to the Hugging Face Hub is not built in; upload the state folder "
                                 "yourself",
    "resume_from_huggingface": "downloading a state from the Hugging Face Hub is not built in; download it and "
                               "give the folder to --resume",
    # gen_img (issue 18)
    "from_module": _gen_img_feature("a prompter module (--from_module, dynamic prompts)"),
    "prompter_module_args": _gen_img_feature("a prompter module (--from_module, dynamic prompts)"),
    "interactive": _gen_img_feature("interactive mode"),
    "image_path": _gen_img_feature("img2img"),
    "mask_path": _gen_img_feature("inpainting"),
    "strength": _gen_img_feature("img2img"),
    "use_original_file_name": _gen_img_feature("img2img (file names from --image_path)"),
    "guide_image_path": _gen_img_feature("ControlNet"),
    "control_net_models": _gen_img_feature("ControlNet"),
    "control_net_lllite_models": _gen_img_feature("ControlNet-LLLite"),
    "control_net_preps": _gen_img_feature("ControlNet"),
    "control_net_multipliers": _gen_img_feature("ControlNet"),
    "control_net_ratios": _gen_img_feature("ControlNet"),
    "clip_vision_strength": _gen_img_feature("CLIP-vision conditioning"),
    "network_regional_mask_max_color_codes": _gen_img_feature("regional LoRA masking"),
    "network_merge_n_models": _gen_img_feature("merging only the first N LoRAs (--network_merge merges all)"),
    "emb_normalize_mode": _gen_img_feature("a prompt-weight normalisation other than kohya's 'original'"),
    "force_scheduler_zero_steps_offset": _gen_img_feature("forcing the scheduler's steps_offset to 0"),
    "shuffle_prompts": _gen_img_feature("shuffling the prompt list"),
    "pyramid_noise_prob": _gen_img_feature("pyramid noise"),
    "pyramid_noise_discount_range": _gen_img_feature("pyramid noise"),
    "noise_offset_prob": _gen_img_feature("noise offset at generation"),
    "noise_offset_range": _gen_img_feature("noise offset at generation"),
}
REFUSED.update(dict.fromkeys(("highres_fix_scale", "highres_fix_steps", "highres_fix_strength",
                              "highres_fix_save_1st", "highres_fix_latents_upscaling", "highres_fix_upscaler",
                              "highres_fix_upscaler_args", "highres_fix_disable_control_net"),
                             _gen_img_feature("highres fix")))
REFUSED.update(dict.fromkeys(("ds_depth_1", "ds_timesteps_1", "ds_depth_2", "ds_timesteps_2", "ds_ratio"),
                             _gen_img_feature("Deep Shrink")))
REFUSED.update(dict.fromkeys(("gradual_latent_timesteps", "gradual_latent_ratio", "gradual_latent_ratio_step",
                              "gradual_latent_every_n_steps", "gradual_latent_s_noise",
                              "gradual_latent_unsharp_params"), _gen_img_feature("Gradual Latent")))

# Options we define whose kohya choices we only partly have: value -> message.
REFUSED_VALUES = {
    "log_with": {value: "Weights & Biases logging is not available; use --log_with tensorboard (events and a "
                        "steps.csv in --logging_dir)" for value in ("wandb", "all")},
}

# kohya's deprecated spellings -> (our option, value): kohya's meaning.
ALIASES = {
    "use_8bit_adam": ("optimizer_type", "AdamW8bit"),
    "use_lion_optimizer": ("optimizer_type", "Lion"),
}
# Values of the alias target that mean "not given" (kohya: '' and None mean AdamW; our default is AdamW).
_UNSET_OPTIMIZER = (None, "", "AdamW")

# Options we define with another default or meaning than kohya, on purpose: dest (or (script, dest)) -> why.
DIFFERENT_ON_PURPOSE = {
    "v2": "auto-detected from the checkpoint when not given",
    "v_parameterization": "auto-detected from the checkpoint (SD 2.x 768-v) when not given",
    "sdxl": "auto-detected from the checkpoint when not given",
    "network_module": "networks.lora when not given (kohya's trainer requires it); other modules are refused "
                      "(issue 17)",
    ("train_textual_inversion", "save_model_as"): "saves .safetensors by default (kohya: .pt): a safe format",
    "max_embeddings_multiples": "default 3 (prompts up to 225 tokens); kohya cuts prompts at 75 tokens "
                                "without it",
    "optimizer_type": "{optimizers}; other names are refused (issue 16)",
    "lr_scheduler": "{schedulers}; other names are refused",
    "network_args": "conv_dim, conv_alpha, dropout, rank_dropout, module_dropout, loraplus_*; block-wise "
                    "keys and other modules' keys are refused (issue 17)",
}
# Notes on options that are the same as kohya's.
NOTES = {
    "max_token_length": "a --config_file value of 75 (what the kohya_ss GUI writes for the default) means the "
                        "default",
    "console_log_simple": "log lines are always plain here",
    "use_8bit_adam": "AdamW8bit is refused here: bitsandbytes is CUDA-only (issue 16)",
}
# Defaults that differ in form only: kohya's value means ours.
SAME_MEANING = {"optimizer_type": "", "crop_top": None, "crop_left": None, "network_module": None,
                "network_weights": None, "network_mul": None, "network_args": None,
                "textual_inversion_embeddings": None}
# GUI files write these values for "use the default" (see max_token_length above).
CONFIG_VALUE_MEANS_DEFAULT = {"max_token_length": (75,)}


# --------------------------------------------------------------------------------------------- inventory
def kohya_options(script):
    """{dest: spec} of every kohya option of our `script` (its kohya scripts together, first one wins)."""
    options = {}
    for kohya_script in KOHYA_SCRIPTS[script]:
        for dest, spec in _DATA["scripts"][kohya_script].items():
            options.setdefault(dest, spec)
    return options


def kohya_scripts_with(dest):
    return [name for name, options in _DATA["scripts"].items() if dest in options]


def all_kohya_option_names():
    return {dest for options in _DATA["scripts"].values() for dest in options}


def defined_options(parser):
    """`--name` -> action for every option string the parser defines itself (hidden kohya ones excluded)."""
    hidden = getattr(parser, "kohya_hidden", set())
    return {s: a for a in parser._actions for s in a.option_strings if a.dest not in hidden}


def is_given(value, kohya_default):
    """A value other than kohya's default; None, false, "" and [] are never 'given' (GUI files write them)."""
    if value is None or value is False or value == "" or value == []:
        return False
    return value != kohya_default


def _int_or_float(text):
    """kohya's type of --lr_warmup_steps / --lr_decay_steps: steps (>= 1), a fraction (< 1) or a percentage."""
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


_TYPES = {"int": int, "float": float, "int_or_float": _int_or_float, "str": str, "Path": str, "None": str}


# --------------------------------------------------------------------------------------------- parsing
class _HelpAll(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(parser.format_help())
        print(f"kohya options of {parser.kohya_script}.py without their own implementation here:")
        for dest in sorted(parser.kohya_hidden):
            status, detail = hidden_status(dest)
            print(f"  --{dest}: {status}" + (f": {detail}" if detail else ""))
        parser.exit()


def add_kohya_options(parser, script):
    """Accept every kohya option of `script` that `parser` does not define (hidden from --help)."""
    defined = defined_options(parser)
    parser.kohya_script = script
    parser.kohya_hidden = set()
    for dest, spec in kohya_options(script).items():
        if f"--{dest}" in defined:
            continue
        kwargs = {"action": "store_true"} if spec["type"] == "flag" else {"type": _TYPES[spec["type"]],
                                                                          "nargs": spec.get("nargs")}
        parser.add_argument(f"--{dest}", dest=dest, default=spec["default"], help=argparse.SUPPRESS, **kwargs)
        parser.kohya_hidden.add(dest)
    parser.add_argument("--help-all", action=_HelpAll,
                        help="also list kohya's options that are ignored or refused here, with the reason")
    parser.epilog = ((parser.epilog + "\n\n") if parser.epilog else "") + (
        f"Every other option of kohya's {' / '.join(s + '.py' for s in KOHYA_SCRIPTS[script])} is accepted: "
        "PyTorch-only switches are ignored with a printed line, the others are refused with the reason before "
        "anything loads (--help-all lists them; docs/en/differences_from_kohya.md).")
    return parser


def hidden_status(dest):
    """(status, detail) of a kohya option the parser does not define."""
    if dest in ALIASES:
        target, value = ALIASES[dest]
        return "alias", f"--{target} {value}"
    if dest in IGNORED:
        return "ignored", IGNORED[dest]
    if dest in REFUSED:
        return "refused", REFUSED[dest]
    return "unhandled", ""


def apply_kohya_options(parser, args, out=None):
    """After parsing: aliases become their option, ignored options print one line each, refused ones raise
    one UserError listing every refused option given. Returns args."""
    out = out or sys.stderr
    script = getattr(parser, "kohya_script", None)
    if script is None:
        return args
    options = kohya_options(script)
    _apply_aliases(parser, args, options)
    refused = []
    for dest, values in REFUSED_VALUES.items():
        value = getattr(args, dest, None)
        if dest in options and dest not in parser.kohya_hidden and value in values:
            refused.append(f"--{dest} {value}: {values[value]}")
    for dest in sorted(parser.kohya_hidden, key=list(options).index):
        if dest in ALIASES or not is_given(getattr(args, dest), options[dest]["default"]):
            continue
        status, detail = hidden_status(dest)
        if status == "ignored":
            print(f"--{dest}: ignored here; {detail}", file=out)
        else:
            refused.append(f"--{dest}: {detail or 'not available here'}")
    if len(refused) == 1:
        raise UserError(refused[0])
    if refused:
        raise UserError("kohya options that are not available here:\n  " + "\n  ".join(refused))
    return args


def _apply_aliases(parser, args, options):
    for dest, (target, value) in ALIASES.items():
        if dest not in parser.kohya_hidden or not getattr(args, dest, False):
            continue
        current = getattr(args, target, None)
        if current not in _UNSET_OPTIMIZER and current != value:
            raise UserError(f"--{dest} means --{target} {value}, but --{target} {current} is given too; "
                            f"give one of them")
        setattr(args, target, value)


# --------------------------------------------------------------------------------------------- the table
def option_status(parser, script, dest):
    """(status, detail) of kohya option `dest` in our `script`: same, alias, different, refused, ignored,
    unhandled (a bug: tests fail) or absent (not an option of these kohya scripts)."""
    options = kohya_options(script)
    if dest not in options:
        return "absent", ""
    action = defined_options(parser).get(f"--{dest}")
    if action is None:
        return hidden_status(dest)
    if action.dest != dest:
        return "alias", f"--{action.dest}"
    different = DIFFERENT_ON_PURPOSE.get((script, dest)) or DIFFERENT_ON_PURPOSE.get(dest)
    if different:
        from ..training.lr_schedules import SCHEDULERS
        from ..training.optimizers import SUPPORTED

        return "different", different.format(optimizers=", ".join(SUPPORTED), schedulers=", ".join(SCHEDULERS))
    kohya_default = options[dest]["default"]
    if action.default != kohya_default and SAME_MEANING.get(dest, "no match") != kohya_default:
        return "unhandled", f"default {action.default!r}, kohya {kohya_default!r}: explain or align"
    if dest in REFUSED_VALUES:
        return "same", "; ".join(f"{value}: refused: {message}" for value, message in REFUSED_VALUES[dest].items())
    return "same", NOTES.get(dest, "")


_WORDS = {
    "en": {"same": "same", "alias": "alias of", "different": "different", "refused": "refused",
           "ignored": "ignored", "absent": "-", "unhandled": "UNHANDLED",
           "option": "kohya option", "lora": "train_network.py (+ sdxl_)", "ti": "train_textual_inversion.py (+ sdxl_)",
           "gen": "gen_img.py", "details": "details (as printed)", "sdxl_only": "(SDXL script only)"},
    "zh": {"same": "相同", "alias": "别名", "different": "有意不同", "refused": "拒绝", "ignored": "忽略",
           "absent": "-", "unhandled": "未处理", "option": "kohya 选项",
           "lora": "train_network.py（含 sdxl_）", "ti": "train_textual_inversion.py（含 sdxl_）",
           "gen": "gen_img.py", "details": "说明（程序输出的原文）", "sdxl_only": "（仅 SDXL 脚本）"},
}
TABLE_START = "<!-- kohya-options-table:start (generated: python -m library.config.options_table --markdown) -->"
TABLE_END = "<!-- kohya-options-table:end -->"


def _cell(parser, script, dest, words):
    status, detail = option_status(parser, script, dest)
    if status == "absent":
        return words["absent"], ""
    text = words[status]
    if status == "alias":
        text += f" `{detail}`"
        detail = NOTES.get(dest, "")
    if script != "gen_img" and dest not in _DATA["scripts"][script]:
        text += " " + words["sdxl_only"]
    return text, detail


def _escape(text):
    return text.replace("|", "\\|")


def markdown_tables(lang, parsers):
    """The generated options tables (trainers, then gen_img) as markdown text."""
    words = _WORDS[lang]
    rows = [f"| {words['option']} | {words['lora']} | {words['ti']} | {words['details']} |", "|---|---|---|---|"]
    trainer_options = list(kohya_options("train_network"))
    trainer_options += [d for d in kohya_options("train_textual_inversion") if d not in trainer_options]
    for dest in trainer_options:
        lora, lora_detail = _cell(parsers["train_network"], "train_network", dest, words)
        ti, ti_detail = _cell(parsers["train_textual_inversion"], "train_textual_inversion", dest, words)
        details = [d for d in dict.fromkeys((lora_detail, ti_detail)) if d]
        rows.append(f"| `--{dest}` | {lora} | {ti} | {_escape('; '.join(details))} |")
    rows += ["", f"| {words['option']} | {words['gen']} | {words['details']} |", "|---|---|---|"]
    for dest in kohya_options("gen_img"):
        status, detail = _cell(parsers["gen_img"], "gen_img", dest, words)
        rows.append(f"| `--{dest}` | {status} | {_escape(detail)} |")
    return "\n".join(rows) + "\n"


def our_parsers():
    """The three scripts' real parsers (imported here so the library does not depend on the CLIs)."""
    import train_network
    import train_textual_inversion
    from ..sampling.cli import build_parser as gen_img_parser

    return {"train_network": train_network.build_parser(),
            "train_textual_inversion": train_textual_inversion.build_parser(), "gen_img": gen_img_parser()}


def doc_path(lang):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "docs", lang, "differences_from_kohya.md")


def render_doc(text, lang, parsers):
    """`text` with the part between the table markers replaced by the generated tables."""
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[:start] + "\n" + markdown_tables(lang, parsers) + text[end:]
