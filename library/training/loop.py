"""The training loop both trainers share, readable top to bottom.

A trainer supplies a `method` (what is trained and how it is saved: textual inversion or LoRA); the loop
owns everything else: step counts, learning-rate schedule, noise and timesteps, the compiled step, saves,
resumable states, samples, validation loss, progress, NaN and Ctrl-C handling. What happens after an update
and at the end of an epoch follows kohya's train_network: (validation loss,) samples, saves and removals.
"""
import math
import os
import signal

import numpy as np

from ..errors import UserError
from ..fileio import remove_abandoned_temp_files
from .lr_schedules import make_lr_schedule
from .masks import uses_loss_mask
from .noise import TrainingNoise
from .optimizers import build_optimizer, set_learning_rates, optimizer_state_params, parse_optimizer_args
from .progress import TrainingProgress
from .saves import epoch_stem, remove_path, removed_epoch, removed_step, save_every_n_epochs, state_keep, step_stem
from .starting_point import starting_point
from .state import save_state, load_state, state_dir_name
from .step import StepRunner
from .validation import (Validator, is_epoch_validation, is_step_validation, validation_seed,
                         validation_timesteps)


def total_steps(args, batches_per_epoch, world_size=1):
    """kohya: --max_train_epochs overrides --max_train_steps; an epoch is ceil(batches / accumulation) steps."""
    steps_per_epoch = math.ceil(batches_per_epoch / max(1, args.gradient_accumulation_steps))
    if args.max_train_epochs:
        return args.max_train_epochs * steps_per_epoch, steps_per_epoch
    return args.max_train_steps, steps_per_epoch


def effective_learning_rate(args, world_size):
    if args.scale_lr:
        return args.learning_rate * args.train_batch_size * args.gradient_accumulation_steps * world_size
    return args.learning_rate


# Ctrl-C, and SIGTERM from a job scheduler: finish the step, save a resumable state, exit 130. SIGTERM is needed
# for Ctrl-C too: once a graph has run, MindSpore's own SIGINT handler (re-installed at every graph run) turns
# SIGINT into SIGTERM to the process.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingLoop:
    def __init__(self, args, dataset, method, latent_source, spec, world, sample_fn=None, validation_dataset=None):
        self.args = args
        self.dataset = dataset
        self.validation_dataset = validation_dataset
        self.method = method
        self.latent_source = latent_source
        self.spec = spec
        self.world = world
        self.sample_fn = sample_fn
        self.output_name = args.output_name
        self.stop_requested = False
        self.last_save = None
        self.last_state = None

    # ------------------------------------------------------------------ set-up
    def _build(self):
        args = self.args
        lr = effective_learning_rate(args, self.world.size)
        groups = self.method.param_groups(lr)
        self.optimizer = build_optimizer(args.optimizer_type, groups, lr, parse_optimizer_args(args.optimizer_args))
        self.base_lrs = [g["lr"] for g in groups if g["params"]]
        self.total, self.steps_per_epoch = total_steps(args, len(self.dataset), self.world.size)
        self.num_epochs = math.ceil(self.total / max(1, self.steps_per_epoch))
        self.save_every_n_epochs = save_every_n_epochs(args, self.num_epochs)
        self.schedule = make_lr_schedule(args, self.total, lr, self.optimizer)
        self.schedule(0, self.base_lrs)  # a bad per-group value (OneCycleLR max_lr list) fails here, not later
        self.schedule_step = 0  # scheduler steps taken: the schedule's position, which --initial_step keeps
        self.runner = StepRunner(self.method.objective, self.optimizer, args.max_grad_norm,
                                 args.gradient_accumulation_steps, self.world.size, self.method.loss_scale)
        self.noise_rng = np.random.default_rng(args.seed if args.seed is not None else 0)
        self.noise = TrainingNoise(args, self.world)
        if hasattr(self.method, "set_loss_mask"):  # masked loss: a graph input, decided before the first step
            self.method.set_loss_mask(uses_loss_mask(args, self.dataset))
        self.optimizer_state = optimizer_state_params(self.optimizer)
        self.validator = None
        if self.validation_dataset is not None and len(self.validation_dataset):
            self.validator = Validator(self.validation_dataset, self.method.objective, self.runner.cells(),
                                       self.latent_source, validation_seed(args),
                                       getattr(args, "max_validation_steps", None),
                                       validation_timesteps(args.min_timestep, args.max_timestep))

    # ------------------------------------------------------------------ the loop
    def run(self):
        self._build()
        args = self.args
        resumed, recent = None, None
        if args.resume:
            resumed, recent = self._resume(args.resume)
        start = starting_point(args, self.steps_per_epoch, self.total, resumed)
        step, epoch, start_batch = start.step, start.epoch, start.batch
        self.dataset.set_step(step)  # token warm-up and caption schedules see the starting step
        self._set_lr()
        if self.world.is_main:  # leftovers of a run killed mid-save into this folder
            remove_abandoned_temp_files(args.output_dir, self.output_name)
        progress = TrainingProgress(self.total, step, args.logging_dir, args.log_prefix,
                                    enabled=self.world.is_main, tensorboard=args.log_with != "none",
                                    validation=self.validator is not None, recent=recent)
        self.progress = progress
        self._announce(progress)
        previous_handlers = {signum: signal.signal(signum, self._on_interrupt) for signum in STOP_SIGNALS}
        try:
            if args.sample_at_first:  # kohya: before the first step, resumed or not, named epoch 0
                self._sample(step, 0)
            micro = 0
            while step < self.total and epoch < self.num_epochs:
                self.dataset.set_epoch(epoch)
                for index in range(start_batch, len(self.dataset)):
                    # the last batch of an epoch always ends an update (accelerate's sync_with_dataloader, as
                    # kohya): an epoch is ceil(batches / accumulation) steps and no state is saved with
                    # gradients still pending
                    last_of_epoch = index == len(self.dataset) - 1
                    position = max(1, self.args.gradient_accumulation_steps) - 1 if last_of_epoch else micro
                    loss, norm, updated = self.runner.run(position, self._inputs(self.dataset[index]))
                    micro = 0 if updated else micro + 1
                    if not np.isfinite(loss):
                        self._stop_on_nan(step, progress)
                    if not updated:
                        continue
                    step += 1
                    self.schedule_step += 1
                    if hasattr(self.method, "after_update"):  # e.g. LoRA max-norm regularisation
                        self.method.after_update(step)
                    self.dataset.set_step(step)  # token warm-up counts optimizer steps
                    ends_epoch = last_of_epoch or step >= self.total
                    step_loss, epoch_loss = self._validate(step, epoch + 1, ends_epoch)
                    progress.update(step, epoch + 1, loss, self.current_lrs, norm, step_loss, epoch_loss)
                    self._set_lr()
                    self._after_step(step, epoch, index + 1, progress)
                    if step >= self.total:
                        break
                start_batch = 0
                epoch += 1
                self._after_epoch(step, epoch, progress)
            self._final_save(step, epoch, progress)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            progress.close()
        return step

    def _inputs(self, batch):
        latents = (self.latent_source(batch) * self.spec.vae_scaling_factor).astype(np.float32)
        if hasattr(self.method, "before_batch"):  # e.g. the dataset's LoRA network_multiplier
            self.method.before_batch(batch)
        # drawn for the global batch and sliced per worker (see noise.py)
        drawn = self.noise(latents, self.noise_rng)
        if drawn.input_noise is None:
            return self.method.step_inputs(batch, latents, drawn.noise, drawn.timesteps)
        return self.method.step_inputs(batch, latents, drawn.noise, drawn.timesteps, input_noise=drawn.input_noise)

    def _set_lr(self):
        """The lr for the NEXT update: the schedule after `schedule_step` steps (torch's last_epoch)."""
        self.current_lrs = self.schedule(self.schedule_step, self.base_lrs)
        set_learning_rates(self.optimizer, self.current_lrs)

    # ------------------------------------------------------------------ validation
    def _validate(self, step, epoch, ends_epoch):
        """kohya: a validation after the step when --validate_every_n_steps divides it, and one at the end of
        each epoch (every --validate_every_n_epochs); both at once are the same computation, done once."""
        if self.validator is None:
            return None, None
        at_step = is_step_validation(self.args, step)
        at_epoch = ends_epoch and is_epoch_validation(self.args, epoch)
        if not (at_step or at_epoch):
            return None, None
        loss = self.validator.run(self._validation_inputs)
        return (loss if at_step else None), (loss if at_epoch else None)

    def _validation_inputs(self, batch, timestep, rng):
        """The training inputs of `batch` (same noise options), with the noise and timestep draws made from the
        validation generator and the timestep fixed (kohya sets min_timestep = max_timestep; a draw from
        [t, t + 1) is t)."""
        args = self.args
        saved = self.noise_rng, args.min_timestep, args.max_timestep
        self.noise_rng, args.min_timestep, args.max_timestep = rng, timestep, timestep + 1
        try:
            return self._inputs(batch)
        finally:
            self.noise_rng, args.min_timestep, args.max_timestep = saved

    # ------------------------------------------------------------------ saves, samples, resume
    def _after_step(self, step, epoch, next_batch, progress):
        args = self.args
        # kohya: samples (every N steps, unless samples go by epochs), then the step save, the last step too
        if args.sample_every_n_steps and not args.sample_every_n_epochs and step % args.sample_every_n_steps == 0:
            self._sample(step, None)
        every = args.save_every_n_steps
        if every and step % every == 0:
            self._save_artifact(step_stem(self.output_name, step), step, epoch + 1, progress)
            if args.save_state:
                self._save_state(state_dir_name(self.output_name, step=step), step, epoch, next_batch)
                old = removed_step(step, every, state_keep(args, "steps"))
                if old is not None:
                    self._remove(state_dir_name(self.output_name, step=old))
            old = removed_step(step, every, args.save_last_n_steps)
            if old is not None:
                self._remove(step_stem(self.output_name, old) + self.method.file_extension)
        if self.stop_requested:
            path = self._save_state(state_dir_name(self.output_name, step=step), step, epoch, next_batch,
                                    force=True)
            raise KeyboardInterruptSaved(step, path)

    def _after_epoch(self, step, epoch, progress):
        """epoch: the number of the epoch just finished (1-based), the last one too."""
        args = self.args
        every = self.save_every_n_epochs
        if every and epoch % every == 0 and epoch < self.num_epochs:
            self._save_artifact(epoch_stem(self.output_name, epoch), step, epoch, progress)
            old = removed_epoch(epoch, every, args.save_last_n_epochs)
            if old is not None:
                self._remove(epoch_stem(self.output_name, old) + self.method.file_extension)
            if args.save_state:
                self._save_state(state_dir_name(self.output_name, epoch=epoch), step, epoch, 0)
                old = removed_epoch(epoch, every, state_keep(args, "epochs"))
                if old is not None:
                    self._remove(state_dir_name(self.output_name, epoch=old))
        if args.sample_every_n_epochs and epoch % args.sample_every_n_epochs == 0:
            self._sample(step, epoch)

    def _final_save(self, step, epoch, progress):
        """kohya: the state (with --save_state or --save_state_on_train_end), then the file; no sample (the
        last epoch's sample, if asked for, was made at its end)."""
        if self.args.save_state or self.args.save_state_on_train_end:
            self._save_state(state_dir_name(self.output_name), step, epoch, 0)
        path = self._save_artifact(self.output_name, step, epoch, progress)
        if self.world.is_main and path:
            progress.write(f"saved {path}")

    def _remove(self, name):
        """Remove an older save (kohya's removal rules, saves.py)."""
        if self.world.is_main:
            remove_path(os.path.join(self.args.output_dir, name))

    def _save_artifact(self, stem, step, epoch, progress):
        if not self.world.is_main:
            return None
        self._refuse_non_finite_weights(step)
        path = os.path.join(self.args.output_dir, stem + self.method.file_extension)
        self.method.save(path, step=step, epoch=epoch)
        self.last_save = path
        return path

    def _save_state(self, name, step, epoch, next_batch, force=False):
        if not self.world.is_main:
            return None
        self._refuse_non_finite_weights(step)
        path = os.path.join(self.args.output_dir, name)
        # Everything random that is not derived from (seed, epoch, batch index) travels with the state: the
        # noise/timestep generator and, when latents are encoded per batch, the VAE sampling generator.
        counters = {"current_step": step, "current_epoch": epoch, "next_batch": next_batch,
                    "noise_rng": self.noise_rng.bit_generator.state, "total_steps": self.total,
                    "seed": self.args.seed,
                    # the lr schedule's own position (it differs from current_step after --initial_step) and
                    # the losses of the running average (the logged loss_avg and validation divergence)
                    "schedule_step": self.schedule_step, "loss_window": list(self.progress.recent)}
        latent_rng = getattr(self.latent_source, "rng_state", None)
        if latent_rng is not None:
            counters["latent_rng"] = latent_rng()
        if self.method.loss_scale is not None:  # fp16: the dynamic loss scale resumes where it was
            counters["loss_scale"] = self.method.loss_scale.state()
        save_state(path, self.method.trainable, self.optimizer_state, counters)
        self.last_state = path
        return path

    def _resume(self, path):
        counters = load_state(path, self.method.trainable, self.optimizer_state)
        self.noise_rng.bit_generator.state = counters["noise_rng"]
        if counters.get("latent_rng") is not None and hasattr(self.latent_source, "set_rng_state"):
            self.latent_source.set_rng_state(counters["latent_rng"])
        if counters.get("loss_scale") is not None and self.method.loss_scale is not None:
            self.method.loss_scale.load(counters["loss_scale"])
        self.schedule_step = int(counters.get("schedule_step", counters["current_step"]))
        position = int(counters["current_step"]), int(counters["current_epoch"]), int(counters["next_batch"])
        return position, counters.get("loss_window")

    def _sample(self, step, epoch):
        if self.sample_fn is not None and self.world.is_main:
            self.sample_fn(step=step, epoch=epoch)

    # ------------------------------------------------------------------ failure handling
    def _on_interrupt(self, signum, frame):
        if self.stop_requested:  # second Ctrl-C / SIGTERM: stop now
            raise KeyboardInterrupt
        self.stop_requested = True

    def _stop_on_nan(self, step, progress):
        raise UserError(f"the loss became NaN/inf at step {step + 1}; that update was skipped and training "
                        f"stopped ({self._last_good()}). Try a lower --learning_rate, --max_grad_norm 1.0, or "
                        f"fp32 (--mixed_precision no).")

    def _refuse_non_finite_weights(self, step):
        """A save must never replace a good file with NaN/inf weights (e.g. after an exploding update)."""
        for name, param in self.method.trainable.items():
            if not np.isfinite(param.asnumpy()).all():
                raise UserError(f"the trained weights became NaN/inf by step {step} ({name}); nothing was "
                                f"saved at this step ({self._last_good()}). Try a lower --learning_rate or "
                                f"--max_grad_norm 1.0.")

    def _last_good(self):
        saves = [p for p in (self.last_save, self.last_state) if p]
        if not saves:
            return "nothing had been saved yet"
        return "the last good save is " + " and ".join(saves)

    def _announce(self, progress):
        if not self.world.is_main:
            return
        a = self.args
        progress.write(f"batches per epoch: {len(self.dataset)} (x{self.world.size} workers), epochs: "
                       f"{self.num_epochs}, optimizer steps: {self.total}, gradient accumulation: "
                       f"{a.gradient_accumulation_steps}, lr: {self.base_lrs}")


class KeyboardInterruptSaved(Exception):
    def __init__(self, step, path):
        super().__init__(f"interrupted at step {step}; resumable state saved to {path} "
                         f"(continue with --resume {path})")
        self.path = path
