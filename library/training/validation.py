"""Validation loss on the images `validation_split` holds out, computed as kohya's train_network computes it.

Every validation sees the same thing, so losses are comparable over training: the first
`--max_validation_steps` batches of the validation datasets in a fixed order, each at the 4 fixed timesteps
kohya uses (evenly inside [min_timestep, max_timestep]: 200, 400, 600, 800 by default), with the noise drawn
from a generator seeded with `--validation_seed` (else `--seed`) at the start of every validation. The loss is
the training loss (same noise options, weights and LoRA multipliers) through a forward-only compiled Cell,
with dropout off (the Cells in eval mode); the training step's graph is not touched and the training random
streams are left where they were, so validation never changes the training losses.
"""
import logging

import numpy as np
from mindspore import nn

from ..config.loader import load_config_dict
from ..errors import UserError

log = logging.getLogger("sdms.training")

NUM_VALIDATION_TIMESTEPS = 4  # kohya's fixed count


def validation_timesteps(min_timestep=None, max_timestep=None, num_train_timesteps=1000):
    """kohya: np.linspace(min, max, 4 + 2, dtype=int)[1:-1] (the interior points, truncated to integers)."""
    low = 0 if min_timestep is None else int(min_timestep)
    high = num_train_timesteps if max_timestep is None else int(max_timestep)
    return [int(t) for t in np.linspace(low, high, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]]


class ForwardLoss(nn.Cell):
    """The method's objective without a gradient: its own graph, compiled once per input shape."""

    def __init__(self, objective):
        super().__init__(auto_prefix=False)
        self.objective = objective

    def construct(self, *inputs):
        return self.objective(*inputs)


class Validator:
    """`run(inputs_for)` -> mean validation loss. `inputs_for(batch, timestep, rng)` builds the objective's
    inputs for one batch at a fixed timestep with noise from `rng` (the loop's own input code)."""

    def __init__(self, dataset, objective, train_cells, latent_source, seed, max_steps=None, timesteps=()):
        self.dataset = dataset
        self.forward = ForwardLoss(objective)
        self.train_cells = list(train_cells)
        self.latent_source = latent_source
        self.seed = int(seed)
        self.steps = len(dataset) if max_steps is None else min(int(max_steps), len(dataset))
        self.timesteps = list(timesteps)
        dataset.set_epoch(0)  # kohya never advances the validation datasets' epoch: one fixed order

    def run(self, inputs_for):
        rng = np.random.default_rng(self.seed)
        latent_state = self._swap_latent_rng()
        self.forward.set_train(False)  # dropout off (LoRA dropouts read `training`)
        try:
            losses = []
            for index in range(self.steps):
                batch = self.dataset[index]
                for timestep in self.timesteps:
                    loss = self.forward(*inputs_for(batch, timestep, rng))
                    losses.append(float(loss.asnumpy()))
        finally:
            for cell in self.train_cells:  # back to training mode (the shared sub-cells are switched too)
                cell.set_train(True)
            if latent_state is not None:
                self.latent_source.set_rng_state(latent_state)
        return float(np.mean(losses)) if losses else float("nan")

    def _swap_latent_rng(self):
        """Images encoded now (no latent cache) are sampled with the validation seed; the training VAE
        generator is put back afterwards."""
        if not hasattr(self.latent_source, "rng_state"):
            return None
        saved = self.latent_source.rng_state()
        self.latent_source.set_rng_state(np.random.default_rng(self.seed).bit_generator.state)
        return saved


def validation_seed(args):
    seed = getattr(args, "validation_seed", None)
    return args.seed if seed is None else seed


def is_step_validation(args, step):
    every = getattr(args, "validate_every_n_steps", None)
    return bool(every) and step % every == 0


def is_epoch_validation(args, epoch):
    """epoch: 1-based, the one just finished. kohya: every epoch unless --validate_every_n_epochs."""
    every = getattr(args, "validate_every_n_epochs", None)
    return epoch % every == 0 if every else True


def _split_problem(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # a wrong type is the dataset schema's message
    if not 0 <= value < 1:
        return (f"must be >= 0 and < 1 (the fraction of each subset's images held out for validation; 1 would "
                f"leave nothing to train), got {value}")
    return None


def check_validation_options(args):
    """Refuse bad validation options before anything loads (the dataset config's validation_split included)
    and say when one has no effect. Returns True when some dataset holds images out for validation."""
    cli_split = getattr(args, "validation_split", None)
    if cli_split is not None and _split_problem(cli_split):
        raise UserError(f"--validation_split {_split_problem(cli_split)}")
    for option in ("validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps"):
        value = getattr(args, option, None)
        if value is not None and value < 0:
            raise UserError(f"--{option} must be >= 1 (0: off), got {value}")
        if value == 0:  # what kohya_ss GUI files write for "off"
            setattr(args, option, None)
    splits = []
    config_file = getattr(args, "dataset_config", None)
    if config_file:
        config = load_config_dict(config_file, "--dataset_config")
        general = config.get("general") if isinstance(config.get("general"), dict) else {}
        datasets = config.get("datasets") if isinstance(config.get("datasets"), list) else []
        for where, table in [("[general]", general)] + [(f"datasets[{i}]", d) for i, d in enumerate(datasets)
                                                         if isinstance(d, dict)]:
            value = table.get("validation_split")
            problem = _split_problem(value) if value is not None else None
            if problem:
                raise UserError(f"{config_file}: {where}.validation_split {problem}")
        fallback = general.get("validation_split", cli_split)
        splits = [d.get("validation_split", fallback) for d in datasets if isinstance(d, dict)]
    else:
        splits = [cli_split]
    holds_out = any(isinstance(s, (int, float)) and s > 0 for s in splits)
    if not holds_out:
        asked = [f"--{o}" for o in ("validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps",
                                    "validation_seed") if getattr(args, o, None) is not None]
        if asked:
            log.warning("%s: no effect, no dataset holds images out for validation (set validation_split in the "
                        "dataset config or --validation_split)", ", ".join(asked))
    return holds_out
