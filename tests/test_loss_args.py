"""The loss/noise options are parsed with kohya's names and defaults in both trainers, bad values are refused
with one message naming the option before anything loads, and options that change nothing here get one line."""
import logging
from types import SimpleNamespace

import pytest

import train_network
import train_textual_inversion
from library.errors import UserError
from library.training import session
from library.training.loss_args import check_loss_arguments_for_model

ADDED = ["loss_type", "huber_schedule", "huber_c", "huber_scale", "debiased_estimation_loss",
         "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "zero_terminal_snr", "multires_noise_iterations",
         "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength", "adaptive_noise_scale",
         "masked_loss"]
KOHYA_DEFAULTS = {"loss_type": "l2", "huber_schedule": "snr", "huber_c": 0.1, "huber_scale": 1.0,
                  "debiased_estimation_loss": False, "scale_v_pred_loss_like_noise_pred": False,
                  "v_pred_like_loss": None, "zero_terminal_snr": False, "multires_noise_iterations": None,
                  "multires_noise_discount": 0.3, "ip_noise_gamma": None, "ip_noise_gamma_random_strength": False,
                  "adaptive_noise_scale": None, "masked_loss": False}
PARSERS = {"lora": lambda: session.build_parser("t", True, train_network.add_network_arguments),
           "ti": lambda: session.build_parser("t", False, train_textual_inversion.add_textual_inversion_arguments)}


@pytest.mark.parametrize("trainer", list(PARSERS))
def test_both_trainers_have_kohyas_options_and_defaults(trainer):
    args = PARSERS[trainer]().parse_args([])
    assert {name: getattr(args, name) for name in ADDED} == KOHYA_DEFAULTS


def parse(*argv, trainer="lora"):
    return session.parse_arguments(PARSERS[trainer](), list(argv))


@pytest.mark.parametrize("argv,expected", [
    (["--loss_type", "huber", "--huber_c", "0"], "--huber_c must be > 0"),
    (["--loss_type", "smooth_l1", "--huber_c", "-0.1", "--huber_schedule", "exponential"], "logarithm"),
    (["--loss_type", "huber", "--huber_schedule", "constant", "--huber_scale", "0"], "--huber_scale must be > 0"),
    (["--ip_noise_gamma", "-0.1"], "--ip_noise_gamma must be >= 0"),
    (["--noise_offset", "-0.1"], "--noise_offset must be >= 0"),
    (["--multires_noise_iterations", "-2"], "--multires_noise_iterations must be >= 0"),
    (["--multires_noise_discount", "-0.3", "--multires_noise_iterations", "4"], "--multires_noise_discount"),
    (["--min_snr_gamma", "-5"], "--min_snr_gamma must be >= 0"),
    (["--v_pred_like_loss", "-1"], "--v_pred_like_loss must be >= 0"),
    (["--adaptive_noise_scale", "0.1"], "--adaptive_noise_scale needs --noise_offset"),
    (["--v_pred_like_loss", "0.1", "--v_parameterization"], "--v_pred_like_loss cannot be used"),
    (["--min_timestep", "500", "--max_timestep", "100"], "--min_timestep 500 must be <= --max_timestep 100"),
    (["--max_timestep", "1001"], "--max_timestep must be in 1..1000"),
])
@pytest.mark.parametrize("trainer", list(PARSERS))
def test_bad_values_are_refused_naming_the_option(argv, expected, trainer):
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        parse(*argv, trainer=trainer)


def test_unknown_loss_type_from_a_config_file_is_refused(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('loss_type = "mse"\n', encoding="utf-8")
    with pytest.raises(UserError, match="loss_type"):
        parse("--config_file", str(config))
    # a value that bypassed argparse's choices (set programmatically) is refused by the check too
    from library.training.loss_args import check_loss_arguments

    args = PARSERS["lora"]().parse_args([])
    args.loss_type = "mse"
    with pytest.raises(UserError, match=r"--loss_type 'mse': expected one of l1, l2, huber, smooth_l1"):
        check_loss_arguments(args)


def test_config_file_loss_type_reaches_the_arguments(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[training]\nloss_type = "huber"\nhuber_schedule = "constant"\nhuber_c = 0.2\n',
                      encoding="utf-8")
    args = parse("--config_file", str(config))
    assert (args.loss_type, args.huber_schedule, args.huber_c) == ("huber", "constant", 0.2)


@pytest.mark.parametrize("argv,line", [
    (["--huber_c", "0.3"], "--huber_c 0.3: only used with --loss_type huber or smooth_l1; ignored with --loss_type l2"),
    (["--loss_type", "huber", "--huber_scale", "2"], "--huber_scale 2.0 has no effect with --huber_schedule snr"),
    (["--multires_noise_discount", "0.5"], "--multires_noise_discount has no effect without"),
    (["--ip_noise_gamma_random_strength"], "--ip_noise_gamma_random_strength has no effect without"),
    (["--noise_offset_random_strength"], "--noise_offset_random_strength has no effect without"),
    (["--noise_offset", "0", "--adaptive_noise_scale", "0.1"], "--adaptive_noise_scale has no effect with"),
])
def test_options_that_change_nothing_get_one_line(argv, line, caplog):
    with caplog.at_level(logging.WARNING, logger="sdms.training"):
        parse(*argv)
    assert [r.getMessage() for r in caplog.records if line in r.getMessage()], caplog.text


def test_defaults_print_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="sdms.training"):
        parse("--loss_type", "huber", "--huber_schedule", "exponential", "--huber_c", "0.2")
    assert not caplog.records


def spec(prediction_type):
    return SimpleNamespace(prediction_type=prediction_type)


def test_v_parameterization_rules_once_the_model_is_known(caplog):
    args = parse("--scale_v_pred_loss_like_noise_pred")
    check_loss_arguments_for_model(args, spec("v_prediction"))
    with pytest.raises(UserError, match="--scale_v_pred_loss_like_noise_pred needs a v-prediction model"):
        check_loss_arguments_for_model(args, spec("epsilon"))
    args = parse("--v_pred_like_loss", "0.2")
    check_loss_arguments_for_model(args, spec("epsilon"))
    with pytest.raises(UserError, match="--v_pred_like_loss cannot be used with a v-prediction model"):
        check_loss_arguments_for_model(args, spec("v_prediction"))
    args = parse("--zero_terminal_snr")
    with caplog.at_level(logging.WARNING, logger="sdms.training"):
        check_loss_arguments_for_model(args, spec("v_prediction"))
        assert not caplog.records
        check_loss_arguments_for_model(args, spec("epsilon"))
    assert "--zero_terminal_snr without v-parameterization" in caplog.text


def test_model_rules_run_right_after_the_model_loads(tmp_path, capsys):
    """train_network refuses --scale_v_pred_loss_like_noise_pred on a noise-prediction model right after it
    loads (the prediction type may come from the checkpoint), before the dataset is built or latents cached."""
    import numpy as np
    from PIL import Image
    from library.checkpoints.tiny import ensure_tiny_checkpoint
    from library.errors import run_cli

    model = ensure_tiny_checkpoint("tiny-sd15", tmp_path / "tiny-sd15.safetensors")
    images = tmp_path / "train" / "1_toy"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "a.png")
    with pytest.raises(SystemExit) as stop:
        run_cli(train_network.main, ["--pretrained_model_name_or_path", str(model), "--train_data_dir",
                                     str(tmp_path / "train"), "--resolution", "64", "--output_dir",
                                     str(tmp_path / "out"), "--scale_v_pred_loss_like_noise_pred"])
    assert stop.value.code == 2
    assert "--scale_v_pred_loss_like_noise_pred needs a v-prediction model" in capsys.readouterr().err


def test_kohya_gui_loss_keys_run_quietly(tmp_path, caplog):
    """The values the kohya_ss GUI writes when these features are off (zeros, not absent) are accepted
    without a word, as kohya accepts them."""
    config = tmp_path / "gui.toml"
    config.write_text('loss_type = "l2"\nhuber_c = 0.1\nhuber_schedule = "snr"\nhuber_scale = 1\n'
                      'multires_noise_discount = 0.3\nmultires_noise_iterations = 0\nnoise_offset = 0\n'
                      'adaptive_noise_scale = 0\nip_noise_gamma = 0\nip_noise_gamma_random_strength = false\n'
                      'min_snr_gamma = 0\ndebiased_estimation_loss = false\nscale_v_pred_loss_like_noise_pred = '
                      'false\nv_pred_like_loss = 0\nzero_terminal_snr = false\nmasked_loss = false\n'
                      'max_timestep = 1000\nmin_timestep = 0\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="sdms.training"):
        args = parse("--config_file", str(config))
    assert not caplog.records, caplog.text
    from library.diffusion.training import LossOptions

    assert LossOptions.from_args(args) == LossOptions()
