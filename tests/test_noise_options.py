"""kohya's noise options (numpy, in the data loop) against a torch reference written here from kohya v0.10.1
(train_util.get_noise_noisy_latents_and_timesteps, custom_train_functions.apply_noise_offset and
pyramid_noise_like), fed the same random draws: our generator is wrapped in a recorder, and the reference
replays what it drew in kohya's order (torch.randn / torch.rand / random.random are replaced by the replay)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from library.diffusion import noise as kohya_noise
from library.training.distributed import World
from library.training.noise import TrainingNoise


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


class Recorder:
    """A np.random.Generator that records every draw, in order."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.draws = []

    def random(self):
        value = self.rng.random()
        self.draws.append(("rand", value))
        return value

    def standard_normal(self, shape):
        value = self.rng.standard_normal(shape)
        self.draws.append(("randn", value))
        return value

    def integers(self, low, high, size, dtype):
        value = self.rng.integers(low, high, size=size, dtype=dtype)
        self.draws.append(("randint", value))
        return value


class Replay:
    """Hands the recorded draws back to the torch reference, checking that it asks for them in that order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def take(self, kind, shape=None):
        got, value = self.draws.pop(0)
        assert got == kind, f"kohya draws {kind} here, we drew {got}"
        if shape is not None:
            assert tuple(np.shape(value)) == tuple(shape), (np.shape(value), shape)
        return value

    def randn(self, *shape):
        return torch.from_numpy(np.asarray(self.take("randn", shape), np.float32))

    def rand1(self):
        return torch.tensor([self.take("rand")], dtype=torch.float32)


def kohya_noise_reference(replay, args, latents):
    """get_noise_noisy_latents_and_timesteps up to the noise the UNet input and the target are made with."""
    latents = torch.from_numpy(latents)
    noise = replay.randn(*latents.shape)
    if args.noise_offset:
        offset = replay.rand1() * args.noise_offset if args.noise_offset_random_strength else args.noise_offset
        if args.adaptive_noise_scale is not None:
            latent_mean = torch.abs(latents.mean(dim=(2, 3), keepdim=True))
            offset = torch.clamp(offset + args.adaptive_noise_scale * latent_mean, 0.0, None)
        noise = noise + offset * replay.randn(latents.shape[0], latents.shape[1], 1, 1)
    if args.multires_noise_iterations:
        b, c, w, h = noise.shape
        upsample = torch.nn.Upsample(size=(w, h), mode="bilinear")
        for i in range(args.multires_noise_iterations):
            r = replay.take("rand") * 2 + 2
            wn, hn = max(1, int(w / (r ** i))), max(1, int(h / (r ** i)))
            noise += upsample(replay.randn(b, c, wn, hn)) * args.multires_noise_discount ** i
            if wn == 1 or hn == 1:
                break
        noise = noise / noise.std()
    timesteps = torch.from_numpy(replay.take("randint"))
    input_noise = noise
    if args.ip_noise_gamma:
        strength = replay.rand1() * args.ip_noise_gamma if args.ip_noise_gamma_random_strength else args.ip_noise_gamma
        input_noise = noise + strength * replay.randn(*latents.shape)
    assert not replay.draws, "we drew more than kohya"
    return noise.numpy(), input_noise.numpy(), timesteps.numpy()


def make_args(**overrides):
    values = dict(noise_offset=None, noise_offset_random_strength=False, adaptive_noise_scale=None,
                  multires_noise_iterations=None, multires_noise_discount=0.3, ip_noise_gamma=None,
                  ip_noise_gamma_random_strength=False, min_timestep=None, max_timestep=None)
    values.update(overrides)
    return SimpleNamespace(**values)


def latents_batch(batch=3, shape=(4, 12, 10), seed=1):
    rng = np.random.default_rng(seed)
    # channel means of different signs and sizes: the adaptive offset differs per sample and channel
    return (rng.standard_normal((batch,) + shape) + rng.normal(0, 1.5, (batch, shape[0], 1, 1))).astype(np.float32)


CASES = {
    "plain": {},
    "offset": dict(noise_offset=0.1),
    "offset random strength": dict(noise_offset=0.1, noise_offset_random_strength=True),
    "adaptive": dict(noise_offset=0.05, adaptive_noise_scale=0.2),
    "adaptive negative": dict(noise_offset=0.05, adaptive_noise_scale=-0.3, noise_offset_random_strength=True),
    "multires": dict(multires_noise_iterations=6, multires_noise_discount=0.4),
    "multires to 1x1": dict(multires_noise_iterations=10),
    "ip gamma": dict(ip_noise_gamma=0.1),
    "ip gamma random": dict(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True, min_timestep=100,
                            max_timestep=200),
    "everything": dict(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.1,
                       multires_noise_iterations=8, multires_noise_discount=0.3, ip_noise_gamma=0.2,
                       ip_noise_gamma_random_strength=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_training_noise_matches_kohya(name):
    args = make_args(**CASES[name])
    latents = latents_batch()
    recorder = Recorder(7)
    drawn = TrainingNoise(args, World())(latents, recorder)
    noise, input_noise, timesteps = kohya_noise_reference(Replay(recorder.draws), args, latents)
    assert drawn.noise.dtype == np.float32
    assert _rel(drawn.noise, noise) < 1e-5
    np.testing.assert_array_equal(drawn.timesteps, timesteps)
    if args.ip_noise_gamma:
        assert _rel(drawn.input_noise, input_noise) < 1e-5
        assert _rel(drawn.input_noise, drawn.noise) > 1e-3
    else:
        assert drawn.input_noise is None
    if args.min_timestep is not None:
        assert timesteps.min() >= 100 and timesteps.max() < 200


def test_multires_levels_stop_at_one_pixel():
    recorder = Recorder(3)
    kohya_noise.pyramid_noise_like(recorder, np.zeros((1, 1, 12, 10), np.float32), iterations=50, discount=0.3)
    fields = [np.shape(v) for kind, v in recorder.draws if kind == "randn"]
    assert fields[0] == (1, 1, 12, 10) and min(fields[-1][2:]) == 1 and len(fields) < 50


@pytest.mark.parametrize("size", [(3, 5, 16, 20), (1, 1, 8, 8), (7, 2, 9, 13)])
def test_bilinear_upsample_is_torchs(size):
    h, w, out_h, out_w = size
    x = np.random.default_rng(0).standard_normal((2, 3, h, w))
    expected = torch.nn.Upsample(size=(out_h, out_w), mode="bilinear")(torch.from_numpy(x)).numpy()
    assert np.abs(kohya_noise.upsample_bilinear(x, (out_h, out_w)) - expected).max() < 1e-12


def test_timesteps_equal_bounds_give_max_timestep():
    t = kohya_noise.sample_timesteps(np.random.default_rng(0), 5, 300, 300)
    np.testing.assert_array_equal(t, [300] * 5)


class FakeWorker(World):
    """A data-parallel worker whose all-gather returns every worker's rows (what msrun's AllGather does)."""

    def __init__(self, rank, size, all_rows):
        super().__init__(rank, size)
        self.all_rows = all_rows

    def gather_rows(self, array):
        per = array.shape[0]
        assert np.array_equal(self.all_rows[self.rank * per:(self.rank + 1) * per], array)
        return self.all_rows


def test_data_parallel_workers_see_the_single_process_noise():
    """Every option on: each of 2 workers gets its slice of the noise a single process draws for the global
    batch (the adaptive offset needs the other worker's latent channel means: they are all-gathered)."""
    args = make_args(**CASES["everything"])
    latents = latents_batch(batch=4)
    single = TrainingNoise(args, World())(latents, np.random.default_rng(11))
    means = kohya_noise.channel_abs_means(latents)
    for rank in range(2):
        part = slice(rank * 2, rank * 2 + 2)
        worker = TrainingNoise(args, FakeWorker(rank, 2, means))(latents[part], np.random.default_rng(11))
        np.testing.assert_array_equal(worker.noise, single.noise[part])
        np.testing.assert_array_equal(worker.input_noise, single.input_noise[part])
        np.testing.assert_array_equal(worker.timesteps, single.timesteps[part])


def test_adaptive_scale_reads_the_real_latents():
    """Two batches with the same draws but different latents get different offsets (the loop used to pass
    zeros)."""
    args = make_args(noise_offset=0.05, adaptive_noise_scale=0.5)
    latents = latents_batch()
    one = TrainingNoise(args, World())(latents, np.random.default_rng(5)).noise
    other = TrainingNoise(args, World())(latents + 3.0, np.random.default_rng(5)).noise
    assert np.abs(one - other).max() > 0.5
