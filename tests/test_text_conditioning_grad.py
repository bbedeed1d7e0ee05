"""Gradient w.r.t. the new textual-inversion rows through TextConditioner in a graph-mode Cell vs torch autograd."""
import mindspore as ms
import numpy as np
import torch
from mindspore import Tensor, nn

from library.models.clip import EOS_TOKEN_ID
from library.models.text_conditioning import TextConditioner
from test_clip_parity import VOCAB, prompt_ids, rel_err, tiny_config, torch_and_ours
from test_text_conditioning_families import kohya_join


class WeightedContextLoss(nn.Cell):
    def __init__(self, conditioner, weights):
        super().__init__()
        self.conditioner = conditioner
        self.weights = Tensor(weights)

    def construct(self, ids):
        context, _ = self.conditioner(ids)
        return (context * self.weights).sum()


def test_new_rows_gradient_matches_torch_with_and_without_checkpointing():
    reference, ours, _ = torch_and_ours(tiny_config(num_hidden_layers=2), projection=False, extra_rows=2, seed=7)
    rng = np.random.default_rng(7)
    # 150 tokens (2 chunks), the new tokens in both chunks; clip_skip 2 (penultimate + final LN)
    ids = np.concatenate([prompt_ids(rng, 2, EOS_TOKEN_ID, inserted=(VOCAB, VOCAB + 1)),
                          prompt_ids(rng, 2, EOS_TOKEN_ID, inserted=(VOCAB + 1,))], axis=1)
    weights = rng.normal(size=(2, 152, 16)).astype(np.float32)

    table = reference.embeddings.token_embedding.weight
    states = reference(torch.from_numpy(ids.reshape(-1, 77)), output_hidden_states=True).hidden_states[-2]
    context = kohya_join(reference.final_layer_norm(states).reshape(2, 154, -1), 2)
    ref_loss = (context * torch.from_numpy(weights)).sum()
    ref_loss.backward()
    ref_grad = table.grad[VOCAB:]

    rows = ours.new_token_rows_parameter()
    base_before = ours.text_model.embeddings.token_embedding.weight.asnumpy().copy()
    grad_fn = ms.value_and_grad(WeightedContextLoss(TextConditioner([ours], "sd1", 2, num_chunks=2), weights),
                                None, [rows])
    loss, (grad,) = grad_fn(Tensor(ids.astype(np.int32)))
    assert rel_err(loss.reshape(1), ref_loss.detach().reshape(1)) <= 1e-4
    assert rel_err(grad, ref_grad) <= 1e-4
    assert np.abs(grad.asnumpy()).min() > 0  # both rows receive gradient

    ours.enable_gradient_checkpointing()
    grad_fn = ms.value_and_grad(WeightedContextLoss(TextConditioner([ours], "sd1", 2, num_chunks=2), weights),
                                None, [rows])
    _, (grad_recomputed,) = grad_fn(Tensor(ids.astype(np.int32)))
    assert rel_err(grad_recomputed, grad.asnumpy()) <= 1e-6
    np.testing.assert_array_equal(ours.text_model.embeddings.token_embedding.weight.asnumpy(), base_before)
