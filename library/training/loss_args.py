"""kohya's loss and noise options (train_util.add_training_arguments, custom_train_functions and
add_masked_loss_arguments), with kohya's names and defaults, and their checks.

`check_loss_arguments` runs right after parsing, before anything loads: bad values are refused with one
message naming the option, options that would change nothing in this configuration get one printed line.
`check_loss_arguments_for_model` runs once the model is loaded (the prediction type may be auto-detected):
kohya's rules that depend on v-parameterization.
The older noise options (--noise_offset, --noise_offset_random_strength, --min_snr_gamma, --min_timestep,
--max_timestep) are in args.py; they are checked here with the rest.
"""
import logging

from ..diffusion.training import HUBER_SCHEDULES, LOSS_TYPES
from ..errors import UserError

log = logging.getLogger("sdms.training")


def add_loss_arguments(parser):
    g = parser.add_argument_group("loss and noise (kohya's options)")
    g.add_argument("--loss_type", type=str, default="l2", choices=list(LOSS_TYPES),
                   help="element-wise loss: l2 (MSE, default), l1, huber or smooth_l1 (pseudo-Huber forms)")
    g.add_argument("--huber_schedule", type=str, default="snr", choices=list(HUBER_SCHEDULES),
                   help="how the huber/smooth_l1 threshold follows the timestep (default snr)")
    g.add_argument("--huber_c", type=float, default=0.1, help="huber/smooth_l1 threshold parameter (default 0.1)")
    g.add_argument("--huber_scale", type=float, default=1.0,
                   help="huber/smooth_l1 threshold scale for the constant and exponential schedules (default 1.0)")
    g.add_argument("--debiased_estimation_loss", action="store_true",
                   help="weight the loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction)")
    g.add_argument("--scale_v_pred_loss_like_noise_pred", action="store_true",
                   help="v-prediction only: scale the loss by SNR/(SNR+1), like a noise-prediction loss")
    g.add_argument("--v_pred_like_loss", type=float, default=None,
                   help="noise prediction only: add a v-prediction-like loss multiplied by this value")
    g.add_argument("--zero_terminal_snr", action="store_true",
                   help="train with the schedule rescaled to zero terminal SNR (meant for v-prediction)")
    g.add_argument("--multires_noise_iterations", type=int, default=None,
                   help="multires (pyramid) noise with this many levels (6-10 usual)")
    g.add_argument("--multires_noise_discount", type=float, default=0.3,
                   help="weight factor per multires level (default 0.3; needs --multires_noise_iterations)")
    g.add_argument("--ip_noise_gamma", type=float, default=None,
                   help="input perturbation noise of this strength (0.1 usual; arXiv 2301.11706)")
    g.add_argument("--ip_noise_gamma_random_strength", action="store_true",
                   help="input perturbation strength drawn in [0, ip_noise_gamma) per batch")
    g.add_argument("--adaptive_noise_scale", type=float, default=None,
                   help="add |latent channel mean| x this value to --noise_offset (needs --noise_offset)")
    g.add_argument("--masked_loss", action="store_true",
                   help="weight the loss by a mask: conditioning_data_dir images (R channel) or alpha masks")


def _nonnegative(args, name):
    value = getattr(args, name, None)
    if value is not None and value < 0:
        raise UserError(f"--{name} must be >= 0, got {value}")


def _note(message):
    log.warning(message)


def check_loss_arguments(args):
    """kohya's verify_training_args rules for these options plus value checks; before anything loads."""
    loss_type, schedule = args.loss_type, args.huber_schedule
    if loss_type not in LOSS_TYPES:
        raise UserError(f"--loss_type {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
    if schedule not in HUBER_SCHEDULES:
        raise UserError(f"--huber_schedule {schedule!r}: expected one of {', '.join(HUBER_SCHEDULES)}")
    if loss_type in ("huber", "smooth_l1"):
        if args.huber_c is None or args.huber_c <= 0:
            why = "the exponential schedule takes its logarithm" if schedule == "exponential" else "the threshold"
            raise UserError(f"--huber_c must be > 0 with --loss_type {loss_type}, got {args.huber_c} ({why})")
        if schedule in ("constant", "exponential") and (args.huber_scale is None or args.huber_scale <= 0):
            raise UserError(f"--huber_scale must be > 0 with --huber_schedule {schedule}, got {args.huber_scale}")
        if schedule == "snr" and args.huber_scale != 1.0:
            _note(f"--huber_scale {args.huber_scale} has no effect with --huber_schedule snr (kohya applies it to "
                  "the constant and exponential schedules only)")
    else:
        unused = [f"--{name} {getattr(args, name)}" for name, default in
                  (("huber_c", 0.1), ("huber_scale", 1.0), ("huber_schedule", "snr")) if getattr(args, name) != default]
        if unused:
            _note(f"{', '.join(unused)}: only used with --loss_type huber or smooth_l1; ignored with --loss_type "
                  f"{loss_type}")

    # (--adaptive_noise_scale may be negative: kohya clamps the resulting offset at 0)
    for name in ("noise_offset", "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma",
                 "min_snr_gamma", "v_pred_like_loss"):
        _nonnegative(args, name)
    if args.adaptive_noise_scale is not None and args.noise_offset is None:
        raise UserError("--adaptive_noise_scale needs --noise_offset (as kohya: it adds to the noise offset)")
    if args.adaptive_noise_scale and not args.noise_offset:  # kohya GUI files write noise_offset = 0
        _note("--adaptive_noise_scale has no effect with --noise_offset 0 (kohya adds no offset then)")
    if args.noise_offset_random_strength and not args.noise_offset:
        _note("--noise_offset_random_strength has no effect without --noise_offset")
    if args.multires_noise_discount != 0.3 and not args.multires_noise_iterations:
        _note("--multires_noise_discount has no effect without --multires_noise_iterations")
    if args.ip_noise_gamma_random_strength and not args.ip_noise_gamma:
        _note("--ip_noise_gamma_random_strength has no effect without --ip_noise_gamma")
    if args.v_pred_like_loss and args.v_parameterization:
        raise UserError("--v_pred_like_loss cannot be used with --v_parameterization (as kohya: it adds a "
                        "v-prediction-like loss to a noise-prediction loss)")
    _check_timesteps(args)


def _check_timesteps(args):
    low, high = args.min_timestep, args.max_timestep
    if low is not None and not 0 <= low <= 999:
        raise UserError(f"--min_timestep must be in 0..999, got {low}")
    if high is not None and not 1 <= high <= 1000:
        raise UserError(f"--max_timestep must be in 1..1000 (exclusive upper bound), got {high}")
    low, high = 0 if low is None else low, 1000 if high is None else high
    if low > high:
        raise UserError(f"--min_timestep {low} must be <= --max_timestep {high}")
    if low == high == 1000:
        raise UserError("--min_timestep = --max_timestep = 1000 trains only timestep 1000, which does not exist "
                        "(timesteps are 0..999)")


def check_loss_arguments_for_model(args, spec):
    """kohya's rules that depend on v-parameterization, once the model (and its prediction type) is known."""
    v_prediction = spec.prediction_type == "v_prediction"
    if args.scale_v_pred_loss_like_noise_pred and not v_prediction:
        raise UserError("--scale_v_pred_loss_like_noise_pred needs a v-prediction model (--v_parameterization); "
                        "this one predicts noise")
    if args.v_pred_like_loss and v_prediction:
        raise UserError("--v_pred_like_loss cannot be used with a v-prediction model (it adds a v-prediction-like "
                        "loss to a noise-prediction loss)")
    if args.zero_terminal_snr and not v_prediction:
        _note("--zero_terminal_snr without v-parameterization: training will be unexpected (kohya's warning; "
              "the last timestep is pure noise, which a noise-prediction model cannot learn)")
