"""Data parallel with msrun on the CPU: 2 workers x batch 1 train the same embedding as 1 process x batch 2,
with kohya's noise options on (the multires noise is normalised over the global batch and the adaptive noise
offset reads every sample's latents: the workers all-gather their latents' channel means)."""
import os
import re
import socket
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toml(tmp_path, name, batch_size):
    text = open(os.path.join(ROOT, "examples", "dataset_ti.toml"), encoding="utf-8").read()
    text = re.sub(r"batch_size = \d+", f"batch_size = {batch_size}", text)
    text = text.replace('"data/object"', repr(os.path.join(ROOT, "examples", "data", "object")).replace("'", '"'))
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_equal_one_process_with_the_same_global_batch(tmp_path):
    common = ["--pretrained_model_name_or_path", "tiny-sd15", "--token_string", "mytoy", "--init_word", "toy",
              "--num_vectors_per_token", "2", "--learning_rate", "5e-3", "--max_train_steps", "3",
              "--cache_latents", "--seed", "5", "--noise_offset", "0.1", "--adaptive_noise_scale", "0.3",
              "--multires_noise_iterations", "3", "--ip_noise_gamma", "0.1", "--loss_type", "huber"]
    script = os.path.join(ROOT, "train_textual_inversion.py")
    # Both runs at once: graph compilation is single-threaded, so three compiling processes on two cores take
    # about 1.5 compile times instead of 2 (one after the other). Its output goes to a file: a full pipe would
    # stall it.
    single_log = tmp_path / "single.log"
    with open(single_log, "w", encoding="utf-8") as log_file:
        single = subprocess.Popen([sys.executable, script, *common, "--dataset_config",
                                   _toml(tmp_path, "one.toml", 2), "--output_dir", str(tmp_path / "single")],
                                  cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
        try:
            parallel = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2",
                                       f"--master_port={_free_port()}", f"--log_dir={tmp_path / 'msrun_log'}",
                                       "--join=True", script, *common, "--dataset_config",
                                       _toml(tmp_path, "dp.toml", 1), "--output_dir", str(tmp_path / "parallel")],
                                      cwd=ROOT, capture_output=True, text=True, timeout=900)
            single.wait(timeout=900)
        finally:
            if single.poll() is None:
                single.kill()
                single.wait()
    assert single.returncode == 0, single_log.read_text()[-2000:]
    log = (tmp_path / "msrun_log" / "worker_0.log")
    assert parallel.returncode == 0, (parallel.stdout[-2000:], log.read_text()[-2000:] if log.exists() else "")
    ours = load_file(str(tmp_path / "parallel" / "mytoy.safetensors"))["emb_params"]
    reference = load_file(str(tmp_path / "single" / "mytoy.safetensors"))["emb_params"]
    assert np.abs(ours - reference).max() <= 1e-5
