"""run_graph (compiled Cells called without Cell.__call__'s per-call cell-tree walk) and the Pipeline's
structure-keyed compiled Cells: same results as a plain call, live parameter values, one compile per input
signature, and a fresh graph whenever adapters change."""
import numpy as np
from mindspore import Tensor, nn

from library.models.bundle import build_bundle
from library.models.layers import Linear
from library.models.weights import assign_array
from library.networks import LoRANetwork
from library.networks.network import invalidate_compiled_graphs
from library.sampling.compiled import run_graph
from library.sampling.pipeline import Pipeline


class TwoLayers(nn.Cell):
    def __init__(self):
        super().__init__()
        self.first = Linear(4, 8)
        self.second = Linear(8, 3)

    def construct(self, x, scale):
        return self.second(self.first(x).tanh()) * scale


def _phases(cell):
    return cell.__dict__.get("_sampling_compiled_phases", {})


def _reference(cell, x, scale):
    """The same maths in numpy from the cell's current parameter values."""
    w1, b1 = cell.first.weight.asnumpy(), cell.first.bias.asnumpy()
    w2, b2 = cell.second.weight.asnumpy(), cell.second.bias.asnumpy()
    return (np.tanh(x @ w1.T + b1) @ w2.T + b2) * scale


def test_run_graph_matches_the_plain_call_and_reads_parameters_live():
    cell = TwoLayers()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    scale = Tensor(np.float32(1.5))
    first = run_graph(cell, Tensor(x), scale).asnumpy()
    second = run_graph(cell, Tensor(x), scale).asnumpy()  # the executor path
    np.testing.assert_allclose(first, _reference(cell, x, 1.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second, first)
    assert len(_phases(cell)) == 1

    assign_array(cell.second.weight, rng.standard_normal((3, 8)).astype(np.float32))
    np.testing.assert_allclose(run_graph(cell, Tensor(x), Tensor(np.float32(-2.0))).asnumpy(),
                               _reference(cell, x, -2.0), rtol=1e-5, atol=1e-6)
    assert len(_phases(cell)) == 1  # a new scale value is not a new signature


def test_run_graph_keeps_one_graph_per_input_shape_and_alternates():
    cell = TwoLayers()
    rng = np.random.default_rng(1)
    small, large = rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    one = Tensor(np.float32(1.0))
    for _ in range(2):
        for x in (small, large):
            np.testing.assert_allclose(run_graph(cell, Tensor(x), one).asnumpy(), _reference(cell, x, 1.0),
                                       rtol=1e-5, atol=1e-6)
    assert len(_phases(cell)) == 2


def test_run_graph_recompiles_when_the_cell_is_invalidated():
    cell = TwoLayers()
    x = np.ones((2, 4), np.float32)
    one = Tensor(np.float32(1.0))
    plain = run_graph(cell, Tensor(x), one).asnumpy()
    adapter = Linear(8, 3)
    assign_array(adapter.weight, np.full((3, 8), 0.25, np.float32))
    cell.second.adapters.append(adapter)
    invalidate_compiled_graphs([cell])  # what LoRANetwork.apply does
    adapted = run_graph(cell, Tensor(x), one).asnumpy()
    assert len(_phases(cell)) == 2
    hidden = np.tanh(x @ cell.first.weight.asnumpy().T + cell.first.bias.asnumpy())
    np.testing.assert_allclose(adapted - plain, hidden @ adapter.weight.asnumpy().T + adapter.bias.asnumpy(),
                               rtol=1e-5, atol=1e-5)


def test_pipeline_rebuilds_its_unet_step_when_a_lora_is_applied_or_removed():
    bundle = build_bundle("tiny-sd15", with_tokenizers=False)
    pipeline = Pipeline(bundle)
    plain = pipeline.unet_step(True)
    assert pipeline.unet_step(True) is plain and pipeline.unet_step(False) is not plain
    network = LoRANetwork(bundle.unet, [], "sd1", bundle.spec.unet, network_dim=2, train_text_encoder=False).apply()
    with_lora = pipeline.unet_step(True)
    assert with_lora is not plain and pipeline.unet_step(True) is with_lora
    network.remove()
    assert pipeline.unet_step(True) is not with_lora
