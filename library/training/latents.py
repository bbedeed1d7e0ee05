"""Images -> latents through the VAE encoder, compiled once; used for uncached batches and the latent cache."""
import numpy as np
from mindspore import Tensor

from ..models.vae import VAEEncode


class LatentEncoder:
    """Sampled (not mean) latents as kohya caches them; scaling by the family factor happens at train time."""

    def __init__(self, vae, seed=0, batch_size=1):
        self.encoder = VAEEncode(vae)
        self.encoder.set_train(False)
        self.rng = np.random.default_rng(seed)
        self.batch_size = max(1, int(batch_size))

    def __call__(self, images):
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = np.ascontiguousarray(images[start:start + self.batch_size], dtype=np.float32)
            mean, logvar = self.encoder(Tensor(chunk))
            mean, logvar = mean.asnumpy(), logvar.asnumpy()
            noise = self.rng.standard_normal(mean.shape).astype(np.float32)
            latents = mean + np.exp(0.5 * logvar) * noise
            if not np.isfinite(latents).all():
                raise FloatingPointError("NaN detected in latents")
            out.append(latents.astype(np.float32))
        return np.concatenate(out, axis=0)
