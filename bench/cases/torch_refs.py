"""Reference-side pieces in plain torch/diffusers/transformers (imported only by ref workers)."""
import torch
from diffusers import DDPMScheduler


def ddpm_noiser():
    """add_noise(latents, noise, timesteps) of Stable Diffusion's training schedule (scaled linear betas
    0.00085..0.012, 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear").add_noise


def sd1_text_encode(encoders, ids):
    return encoders[0](ids[0]).last_hidden_state, None


def sdxl_text_encode(encoders, ids):
    """SDXL: encoder 1 penultimate layer, encoder 2 penultimate layer (no final norm), pooled projection."""
    first = encoders[0](ids[0], output_hidden_states=True)
    second = encoders[1](ids[1], output_hidden_states=True)
    layers = [e.config.num_hidden_layers for e in encoders]
    context = torch.cat([first.hidden_states[layers[0] - 1], second.hidden_states[layers[1] - 1]], dim=-1)
    return context, second.text_embeds


class NewRowsEmbedding(torch.nn.Module):
    """Ids < vocab size from the frozen table, the others from the trainable rows (the lookup ours uses)."""

    def __init__(self, table, rows):
        super().__init__()
        self.table = table.detach()
        self.rows = rows

    def forward(self, ids):
        vocab = self.table.shape[0]
        base = torch.nn.functional.embedding(ids.clamp(max=vocab - 1), self.table)
        added = torch.nn.functional.embedding((ids - vocab).clamp(0, self.rows.shape[0] - 1), self.rows)
        return torch.where((ids >= vocab).unsqueeze(-1), added, base)
