"""Every kind of file the project saves survives a full disk and a kill mid-save; latent caches are never reused
for a changed image or another VAE.

- disk full: the writer fails half-way with ENOSPC -> one UserError naming the file and saying the disk is
  full, the previous file byte-identical, no temp file left;
- kill -9 during a training-state save (in a subprocess, stopped at a known point): the previous state
  still loads, also when the kill falls between moving the old folder aside and renaming the new one in;
- latent cache: a disk cache made from other pixels or by another VAE encoder is re-encoded (with a log
  line for the VAE), and an SD1/SD2 cache is never read for SDXL.
"""
import builtins
import errno
import io
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from mindspore import Tensor, Parameter
from PIL import Image

from library.config import blueprint_from_user_config
from library.data import build_dataset_group, cache_latents, latent_cache_path
from library.data.latent_cache import save_npz, vae_fingerprint
from library.errors import UserError
from library.formats.embeddings import save_embedding
from library.formats.lora import save_lora
from library.models.configs import get_spec
from library.models.vae import AutoencoderKL
from library.models.weights import assign_array
from library.sampling.png_output import save_png
from library.training.state import load_state, save_state
from test_reliability_runner import REPO, wait_for_marker

# ---------------------------------------------------------------------------------------------- disk full


class _HalfThenFull:
    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch):
    """From now on, writing any hidden temp file (how atomic writes start) runs out of space half-way."""
    real_open = builtins.open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if ("w" in mode or "a" in mode) and name.startswith("."):
            return _HalfThenFull(handle)
        return handle

    def arm():
        monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
        monkeypatch.setattr(io, "open", open_on_a_full_disk)  # zipfile (.pt, .npz) opens through io.open
    return arm


class _Param:
    """What save_state reads from a parameter."""

    def __init__(self, array):
        self.array = array

    def asnumpy(self):
        return self.array


def _embedding(path, value):
    save_embedding(str(path), "sd1", [np.full((2, 32), value, np.float32)], "mytoy", step=int(value))


def _lora(path, value):
    save_lora(str(path), {"lora_unet_x.lora_down.weight": np.full((2, 8), value, np.float32),
                          "lora_unet_x.lora_up.weight": np.full((8, 2), value, np.float32),
                          "lora_unet_x.alpha": np.array(2.0, np.float32)}, {"ss_steps": str(value)})


def _state(path, value):
    save_state(str(path), {"w": _Param(np.full((3,), value, np.float32))}, {"m": _Param(np.zeros(3, np.float32))},
               {"current_step": int(value)})


def _png(path, value):
    save_png(str(path), np.full((8, 8, 3), int(value) * 40, np.uint8), {"parameters": f"value {value}"})


def _latent_cache(path, value):
    image = path.parent / "img.png"
    if not image.exists():
        Image.new("RGB", (16, 16)).save(image)
    item = SimpleNamespace(path=str(image), size=(16, 16))
    save_npz(str(path), item, {"latents": np.full((4, 2, 2), value, np.float32), "original_size": (16, 16),
                               "crop_ltrb": (0, 0, 16, 16)}, vae_id="abc")


WRITERS = {"embedding.safetensors": _embedding, "embedding.pt": _embedding, "lora.safetensors": _lora,
           "lora.pt": _lora, "state": _state, "sample.png": _png, "img_0016x0016_sd.npz": _latent_cache}


def _snapshot(path):
    if os.path.isdir(path):
        return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}
    with open(path, "rb") as f:
        return f.read()


# zipfile (inside np.savez / the .pt writer) leaves an unclosed archive behind when its file fails; its
# finalizer complains later: not ours to fix
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_disk_full_during_a_save_keeps_the_previous_file(tmp_path, full_disk, name):
    path = tmp_path / name
    WRITERS[name](path, 1.0)
    before, listing = _snapshot(path), sorted(os.listdir(tmp_path))
    full_disk()
    with pytest.raises(UserError) as error:
        WRITERS[name](path, 2.0)
    message = str(error.value)
    assert str(path) in message and "the disk is full" in message, message
    assert _snapshot(path) == before
    assert sorted(os.listdir(tmp_path)) == listing  # no temp file or folder left behind


def test_disk_full_when_the_output_folder_cannot_even_take_a_temp_file(tmp_path, monkeypatch):
    import tempfile

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    with pytest.raises(UserError, match="the disk is full"):
        _embedding(tmp_path / "e.safetensors", 1.0)
    monkeypatch.setattr(tempfile, "mkdtemp", no_space)
    with pytest.raises(UserError, match=f"training state to {tmp_path / 'state'}: the disk is full"):
        _state(tmp_path / "state", 1.0)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- kill -9

_KILLED_SAVE = r"""
import os, sys, time
import numpy as np
from library.training import state

marker, where = sys.argv[1], sys.argv[2]
class P:
    def __init__(self, a): self.a = a
    def asnumpy(self): return self.a
if where == "mid-write":
    import builtins
    real_open = builtins.open
    def stalling_open(file, mode="r", *a, **k):
        handle = real_open(file, mode, *a, **k)
        if "w" in mode and os.path.basename(os.fspath(file)).startswith(".trainable"):
            handle.write(b"partial")
            handle.flush()
            real_open(marker, "w").close()
            time.sleep(600)
        return handle
    builtins.open = stalling_open
else:  # between moving the old state aside and renaming the new one in
    real_replace = os.replace
    def stalling_replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".old"):
            open(marker, "w").close()
            time.sleep(600)
    os.replace = stalling_replace
state.save_state(sys.argv[3], {"w": P(np.full(3, 2.0, np.float32))}, {"m": P(np.ones(3, np.float32))},
                 {"current_step": 2})
"""


@pytest.mark.parametrize("where", ["mid-write", "between-renames"])
def test_kill_during_a_state_save_leaves_the_previous_state_loadable(tmp_path, where):
    path = tmp_path / "run-state"
    _state(path, 1.0)
    marker = tmp_path / "stalled"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(marker), where, str(path)], cwd=REPO,
                               env=dict(os.environ, PYTHONPATH=REPO, GLOG_v="3"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_marker(process, marker, timeout=120)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    weights, moments = Parameter(Tensor(np.zeros(3, np.float32)), name="w"), Parameter(
        Tensor(np.zeros(3, np.float32)), name="m")
    counters = load_state(str(path), {"w": weights}, {"m": moments})
    assert counters["current_step"] == 1
    np.testing.assert_array_equal(weights.asnumpy(), np.full(3, 1.0, np.float32))

    # the next save of that state cleans up after the killed one and replaces the state normally
    _state(path, 3.0)
    assert sorted(os.listdir(tmp_path)) == ["run-state", "stalled"]
    assign_array(weights, np.zeros(3, np.float32))
    assert load_state(str(path), {"w": weights}, {"m": moments})["current_step"] == 3
    np.testing.assert_array_equal(weights.asnumpy(), np.full(3, 3.0, np.float32))


# ---------------------------------------------------------------------------------------------- latent caches

class FakeEncoder:
    """A stand-in VAE encoder (2x2 pooling, scaled) that counts the images it encodes."""

    def __init__(self, scale=1.0):
        self.scale, self.encoded = scale, 0

    def __call__(self, images):
        self.encoded += images.shape[0]
        b, c, h, w = images.shape
        pooled = images.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)) * self.scale
        return np.concatenate([pooled, pooled[:, :1]], axis=1)


def _group(tmp_path):
    config = {"general": {"caption_extension": ".txt"},
              "datasets": [{"resolution": 16, "batch_size": 1, "subsets": [{"image_dir": "imgs"}]}]}
    return build_dataset_group(blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml")),
                               seed=0)


def _cache(tmp_path, encoder, vae_id, family="sd", log=None):
    group = _group(tmp_path)
    counts = cache_latents(group, encoder, to_disk=True, downscale=2, family=family, vae_id=vae_id, log=log)
    return counts, group.items[0].cache["latents"]


def test_latent_cache_is_redone_for_a_changed_image_or_another_vae(tmp_path):
    os.makedirs(tmp_path / "imgs")
    image = tmp_path / "imgs" / "a.png"
    (tmp_path / "imgs" / "a.txt").write_text("a caption", encoding="utf-8")
    Image.new("RGB", (16, 16), (10, 20, 30)).save(image)
    assert _cache(tmp_path, FakeEncoder(), "vae-1")[0] == {"reused": 0, "rebuilt": 1}
    assert _cache(tmp_path, FakeEncoder(), "vae-1")[0] == {"reused": 1, "rebuilt": 0}

    Image.new("RGB", (16, 16), (200, 20, 30)).save(image)  # edited image, same size and name
    counts, latents = _cache(tmp_path, FakeEncoder(), "vae-1")
    assert counts == {"reused": 0, "rebuilt": 1}
    assert latents[0, 0, 0] == pytest.approx(200 / 127.5 - 1)

    logged = []
    other = FakeEncoder(scale=2.0)  # another VAE: the cached latents would be wrong for it
    counts, latents = _cache(tmp_path, other, "vae-2", log=logged.append)
    assert counts == {"reused": 0, "rebuilt": 1} and other.encoded == 1
    assert latents[0, 0, 0] == pytest.approx(2 * (200 / 127.5 - 1))
    assert any("made by another VAE" in line and "a_0016x0016_sd.npz" in line for line in logged), logged

    # an SD1/SD2 cache is never read for SDXL (its own file name), whatever it holds
    sdxl = FakeEncoder()
    assert _cache(tmp_path, sdxl, "vae-2", family="sdxl")[0] == {"reused": 0, "rebuilt": 1}
    assert os.path.isfile(latent_cache_path(str(image), (16, 16), "sdxl"))


def test_vae_fingerprint_follows_the_encoder_weights_only(tmp_path):
    config = get_spec("tiny-sd15").vae
    first, second = AutoencoderKL(config), AutoencoderKL(config)
    weights = dict(first.parameters_and_names())
    for name, param in second.parameters_and_names():
        # the same weights, except a decoder-only fine-tune (ft-MSE style), which keeps encoder latents valid
        assign_array(param, weights[name].asnumpy() + (0.5 if name.startswith("decoder.") else 0.0))
    assert vae_fingerprint(first) == vae_fingerprint(second)
    name, param = next((n, p) for n, p in second.parameters_and_names() if n.startswith("encoder."))
    assign_array(param, param.asnumpy() + 0.5)
    assert vae_fingerprint(first) != vae_fingerprint(second)
