"""numpy safetensors reader/writer (header validation, bf16) and the torch-free torch.save writer."""
import hashlib
import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from library.errors import UserError
from library.formats.safetensors_io import (Bf16Tensor, data_region_sha256, read_header, read_safetensors,
                                            write_safetensors)
from library.formats.torch_zip import write_torch_file

TENSORS = {
    "b.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "a.bias": np.linspace(-1, 1, 5).astype(np.float32),
    "half": np.array([[0.5, -2.0]], dtype=np.float16),
    "ids": np.array([1, 2, 3], dtype=np.int64),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


def test_round_trip_with_the_reference_library(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, TENSORS, {"note": "hello", "ss_network_dim": "4"})
    loaded = safetensors.numpy.load_file(str(path))
    assert loaded.keys() == TENSORS.keys()
    for name, value in TENSORS.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value)
    with safetensors.safe_open(str(path), "np") as f:
        assert f.metadata() == {"note": "hello", "ss_network_dim": "4"}
    ours, metadata = read_safetensors(path)
    assert metadata["note"] == "hello" and all(np.array_equal(ours[k], v) for k, v in TENSORS.items())
    partial, _ = read_safetensors(path, keys=["half"])
    assert list(partial) == ["half"]


def test_reads_files_of_the_reference_library(tmp_path):
    path = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(TENSORS, str(path), metadata={"k": "v"})
    tensors, metadata = read_safetensors(path)
    assert metadata == {"k": "v"} and all(np.array_equal(tensors[k], v) for k, v in TENSORS.items())


def test_data_region_hash_matches_the_reference_serialization(tmp_path):
    same_dtype = {k: v for k, v in TENSORS.items() if v.dtype == np.float32}
    path = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(same_dtype, str(path))
    raw = path.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    assert data_region_sha256(same_dtype) == hashlib.sha256(raw[8 + header_length:]).hexdigest()


def test_bf16_read_and_write(tmp_path):
    values = torch.tensor([[1.0, 3.14159, -2.5e-3], [65504.0, 1e-8, -7.0]])
    torch_file = tmp_path / "torch_bf16.safetensors"
    safetensors.torch.save_file({"w": values.to(torch.bfloat16)}, str(torch_file))
    tensors, _ = read_safetensors(torch_file)
    assert tensors["w"].dtype == np.float32
    assert np.array_equal(tensors["w"], values.to(torch.bfloat16).float().numpy())
    ours = tmp_path / "ours_bf16.safetensors"
    write_safetensors(ours, {"w": Bf16Tensor.from_float32(values.numpy())})
    back = safetensors.torch.load_file(str(ours))["w"]
    assert back.dtype == torch.bfloat16 and torch.equal(back, values.to(torch.bfloat16))


def _raw_file(path, header, data=b"", header_length=None):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_length is None else header_length) + raw + data)
    return path


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("header, data, header_length, message", [
    (GOOD, b"\0" * 4, None, "outside"),                       # truncated data
    (GOOD, b"\0" * 8, 10**6, "does not fit"),                 # header length beyond the file
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12"),
    ({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "data_offsets"),
    (dict(GOOD, __metadata__={"step": 5}), b"\0" * 8, None, "strings to strings"),
    ([1, 2], b"", None, "JSON object"),
])
def test_malformed_files_are_rejected_before_reading(tmp_path, header, data, header_length, message):
    path = _raw_file(tmp_path / "bad.safetensors", header, data, header_length)
    with pytest.raises(UserError, match=message) as error:
        read_safetensors(path)
    assert "bad.safetensors" in str(error.value)


def test_garbage_and_tiny_files(tmp_path):
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(UserError, match="truncated or empty"):
        read_header(tiny)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 5) + b"{nope" + b"\0" * 8)
    with pytest.raises(UserError, match="not JSON"):
        read_header(garbage)


def test_writer_rejects_non_string_metadata(tmp_path):
    with pytest.raises(UserError, match="strings to strings"):
        write_safetensors(tmp_path / "m.safetensors", TENSORS, {"step": 5})
    assert not (tmp_path / "m.safetensors").exists()


def test_torch_file_writer_loads_with_weights_only(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    obj = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "mytoy", "step": 1500,
           "sd_checkpoint": None, "half": vectors.astype(np.float16), "bf16": Bf16Tensor.from_float32(vectors),
           "nested": [1, (2, "x"), {}], "big": 2**40, "negative": -7, "scale": 0.25, "flag": True}
    path = tmp_path / "x.pt"
    write_torch_file(path, obj)
    for mmap in (False, True):  # mmap needs the 64-byte aligned records torch.save writes
        loaded = torch.load(str(path), weights_only=True, mmap=mmap)
        assert torch.equal(loaded["string_to_param"]["*"], torch.from_numpy(vectors))
        assert loaded["half"].dtype == torch.float16 and loaded["bf16"].dtype == torch.bfloat16
        assert torch.equal(loaded["bf16"], torch.from_numpy(vectors).to(torch.bfloat16))
        assert {k: loaded[k] for k in ("string_to_token", "name", "step", "sd_checkpoint", "nested", "big",
                                        "negative", "scale", "flag")} == {
            "string_to_token": {"*": 265}, "name": "mytoy", "step": 1500, "sd_checkpoint": None,
            "nested": [1, (2, "x"), {}], "big": 2**40, "negative": -7, "scale": 0.25, "flag": True}


def test_torch_free_reader_matches_torch_save(tmp_path):
    from library.formats.torch_zip import read_torch_file

    v = torch.randn(3, 8)
    path = tmp_path / "a.pt"
    torch.save({"string_to_param": {"*": v}, "name": "x", "step": 3, "transposed": v.t(), "slice": v[1:, 2:5],
                "bf16": v.bfloat16(), "param": torch.nn.Parameter(v), "scalar": torch.tensor(2.5),
                "old": torch.nn.ParameterDict({"*": torch.nn.Parameter(v[:1])})}, str(path))
    loaded = read_torch_file(path)
    assert loaded["name"] == "x" and loaded["step"] == 3 and float(loaded["scalar"]) == 2.5
    for key, expected in (("transposed", v.t()), ("slice", v[1:, 2:5]), ("bf16", v.bfloat16().float()),
                          ("param", v)):
        assert np.array_equal(loaded[key], expected.numpy()), key
    assert np.array_equal(loaded["string_to_param"]["*"], v.numpy())
    assert np.array_equal(loaded["old"]._parameters["*"], v[:1].numpy())


class _Malicious:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torch_free_reader_refuses_code_and_legacy_files(tmp_path):
    from library.formats.torch_zip import UnsupportedTorchFile, read_torch_file

    payload = _Malicious()
    payload.marker = str(tmp_path / "created_by_pickle")
    torch.save({"x": payload}, str(tmp_path / "evil.pt"))
    with pytest.raises(UnsupportedTorchFile, match="open"):
        read_torch_file(tmp_path / "evil.pt")
    assert not (tmp_path / "created_by_pickle").exists()
    torch.save({"x": torch.ones(2)}, str(tmp_path / "legacy.pt"), _use_new_zipfile_serialization=False)
    with pytest.raises(UnsupportedTorchFile, match="legacy"):
        read_torch_file(tmp_path / "legacy.pt")
