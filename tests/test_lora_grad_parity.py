"""A LoRA training step's loss and LoRA gradients equal a torch reference (diffusers blocks + kohya's LoRA math).

Stack: ResnetBlock2D (3x3 conv LoRA via conv_dim, time-embedding Linear, 1x1 shortcut) followed by a
Transformer2DModel with 1x1-conv projections (SD1 style), same weights, inputs and LoRA weights on both sides.
"""
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D as TorchResnet
from diffusers.models.transformers.transformer_2d import Transformer2DModel as TorchTransformer
from mindspore import nn, ops, ParameterTuple, Tensor

from library.models.resnet import ResnetBlock2D
from library.models.transformer import Transformer2DModel
from library.models.weights import load_state_dict
from library.networks import LoRANetwork

IN_CH, OUT_CH, TEMB, CTX, GROUPS = 4, 8, 16, 12, 2


class Stack(nn.Cell):
    def __init__(self):
        super().__init__()
        self.resnet = ResnetBlock2D(IN_CH, OUT_CH, temb_channels=TEMB, groups=GROUPS, eps=1e-6)
        self.attn = Transformer2DModel(2, 4, OUT_CH, cross_attention_dim=CTX, norm_num_groups=GROUPS)

    def construct(self, x, temb, context, target):
        out = self.attn(self.resnet(x, temb), context)
        return ((out - target) ** 2).mean()


class TorchStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = TorchResnet(in_channels=IN_CH, out_channels=OUT_CH, temb_channels=TEMB, groups=GROUPS, eps=1e-6)
        self.attn = TorchTransformer(num_attention_heads=2, attention_head_dim=4, in_channels=OUT_CH,
                                     cross_attention_dim=CTX, norm_num_groups=GROUPS)

    def forward(self, x, temb, context, target):
        out = self.attn(self.resnet(x, temb), encoder_hidden_states=context).sample
        return ((out - target) ** 2).mean()


class LossAndGrads(nn.Cell):
    def __init__(self, loss_cell, params):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.weights = ParameterTuple(params)
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, *inputs):
        return self.loss_cell(*inputs), self.grad(self.loss_cell, self.weights)(*inputs)


def _kohya_lora_hook(down, up, scale, conv_args):
    """torch forward hook: y + up(down(x)) * multiplier * alpha / r (kohya networks/lora.py forward)."""
    def hook(module, inputs, output):
        x = inputs[0]
        if conv_args is None:
            h = F.linear(F.linear(x, down), up)
        else:
            h = F.conv2d(F.conv2d(x, down, **conv_args), up)
        return output + h * scale
    return hook


def test_lora_step_loss_and_gradients_match_torch():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    reference = TorchStack()
    ours = Stack()
    load_state_dict(ours, {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()})

    network = LoRANetwork(ours, [], "sd1", {}, multiplier=0.8, network_dim=3, network_alpha=2.0, conv_dim=2,
                          conv_alpha=1.0, seed=1)
    kinds = {m.lora_name: m.is_conv for m in network.modules}
    assert "lora_unet_resnet_conv1" in kinds and kinds["lora_unet_resnet_conv1"]
    assert "lora_unet_attn_transformer_blocks_0_attn2_to_k" in kinds and "lora_unet_resnet_time_emb_proj" in kinds
    torch_weights = {}
    for module in network.modules:
        up = (0.3 * rng.standard_normal(module.lora_up.weight.shape)).astype(np.float32)
        module.lora_up.weight.set_data(Tensor(up))
        down_t = torch.tensor(module.down_weight(), requires_grad=True)
        up_t = torch.tensor(up, requires_grad=True)
        layer = reference.get_submodule(module.module_path)
        conv_args = dict(stride=layer.stride, padding=layer.padding) if module.is_conv else None
        layer.register_forward_hook(_kohya_lora_hook(down_t, up_t, 0.8 * module.scale, conv_args))
        torch_weights[module.lora_name] = (down_t, up_t)
    network.apply()

    inputs = [rng.standard_normal(s).astype(np.float32) for s in ((2, IN_CH, 4, 4), (2, TEMB), (2, 5, CTX),
                                                                     (2, OUT_CH, 4, 4))]
    torch_loss = reference(*(torch.from_numpy(a) for a in inputs))
    torch_loss.backward()

    params = network.parameters()
    loss, grads = LossAndGrads(ours, params)(*(Tensor(a) for a in inputs))
    assert abs(float(loss.asnumpy()) - torch_loss.item()) <= 1e-4 * abs(torch_loss.item())
    names = [p.name for p in params]
    for name, grad in zip(names, grads):
        lora_name, part = name.split(".", 1)
        down_t, up_t = torch_weights[lora_name]
        expected = (down_t if part.startswith("lora_down") else up_t).grad.numpy()
        got = grad.asnumpy().reshape(expected.shape)
        scale = np.abs(expected).max()
        assert scale > 0, f"{name}: reference gradient is zero, the test would prove nothing"
        assert np.abs(got - expected).max() / scale <= 1e-4, f"{name}: gradient differs"
