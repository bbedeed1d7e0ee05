"""Sinusoidal timestep embedding vs diffusers' get_timestep_embedding."""
import numpy as np
import mindspore as ms
import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from library.models.embeddings import Timesteps


@pytest.mark.parametrize("channels, flip, shift", [(320, True, 0), (256, True, 0), (7, False, 1)])
def test_timestep_embedding_matches_diffusers(channels, flip, shift):
    timesteps = np.array([0.0, 1.0, 17.5, 999.0, 1024.0], np.float32)  # fractional and SDXL-size values too
    expected = get_timestep_embedding(torch.tensor(timesteps), channels, flip_sin_to_cos=flip,
                                      downscale_freq_shift=shift).numpy()
    got = Timesteps(channels, flip, shift)(ms.Tensor(timesteps)).asnumpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)
