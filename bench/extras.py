"""The extra measurements (`python -m bench --extras`), stored under "extras" in bench_results.json.

- latent_caching: TI trainer (tiny-sd15, the bundled example) steps/s without and with --cache_latents, and the
  one-off caching time (bench/cache_probe.py, inside the trainer's own set-up).
- recompute: the UNet fwd+bwd case on ours with and without gradient checkpointing at the largest latent size
  (64, 48, 32) where both run: memory saved, time paid.
- data_parallel: TI trainer steps/s, 1 process x batch 2 vs msrun 2 workers x batch 1 (same global batch; the
  trainer pins each worker to its own core).
- compile: first call minus a steady call, per case, from the case results (ours: graph compile).
- quickstart: wall time of `bash examples/quickstart.sh` with OUT in a temporary folder.
Trainer steps/s come from the per-step CSV log (--logging_dir): steps 1..N, so the first step (compile) is out.
"""
import contextlib
import csv
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from .harness import run_case
from .worker import last_lines, thread_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TI_ARGS = ["--pretrained_model_name_or_path", "tiny-sd15", "--token_string", "mytoy", "--init_word", "toy",
           "--num_vectors_per_token", "2", "--learning_rate", "5e-3", "--seed", "5"]
TRAIN_STEPS = 25


def run_extras(threads, say=print, case_results=None, names=None, timeout_s=3600.0):
    """{extra name: result dict}; a failing extra is recorded with its reason and the others still run."""
    steps = {"latent_caching": lambda: latent_caching(threads, timeout_s),
             "recompute": lambda: recompute(threads, timeout_s, say),
             "data_parallel": lambda: data_parallel(threads, timeout_s),
             "compile": lambda: compile_times(case_results or {}),
             "quickstart": lambda: quickstart(threads, timeout_s)}
    found = {}
    for name, measure in steps.items():
        if names and name not in names:
            continue
        say(f"- extra {name}")
        started = time.time()
        try:
            found[name] = {"status": "ok", **measure()}
        except Exception as e:  # noqa: BLE001 - recorded, the next extra still runs
            found[name] = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        found[name]["wall_s"] = round(time.time() - started, 1)
        found[name]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        say(f"  {found[name]['status']} in {found[name]['wall_s']:.0f} s" +
            (f": {found[name]['error']}" if found[name].get("error") else ""))
    return found


# ---------------------------------------------------------------------------------------------- trainer runs

def dataset_toml(folder, batch_size):
    """The bundled example's TOML with another batch size and an absolute image folder."""
    text = open(os.path.join(ROOT, "examples", "dataset_ti.toml"), encoding="utf-8").read()
    text = re.sub(r"batch_size = \d+", f"batch_size = {batch_size}", text)
    text = text.replace('"data/object"', json.dumps(os.path.join(ROOT, "examples", "data", "object")))
    path = os.path.join(folder, f"dataset_b{batch_size}.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def run_trainer(folder, extra_args, threads, timeout_s, msrun_workers=0):
    """Train the tiny TI on the example; {"steps_per_s", "steps", "wall_s"} (steps/s after the first step)."""
    out, logs = os.path.join(folder, "out"), os.path.join(folder, "logs")
    script = os.path.join(ROOT, "train_textual_inversion.py")
    cmd = [sys.executable, script]
    if msrun_workers:
        msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
        cmd = [msrun, f"--worker_num={msrun_workers}", f"--local_worker_num={msrun_workers}",
               f"--master_port={free_port()}", f"--log_dir={os.path.join(folder, 'msrun_log')}", "--join=True",
               script]
    cmd += TI_ARGS + ["--max_train_steps", str(TRAIN_STEPS), "--output_dir", out, "--logging_dir", logs,
                      *extra_args]
    log_path = os.path.join(folder, "trainer.log")
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                              env=dict(os.environ, GLOG_v="3", **thread_env(threads)))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        where = os.path.join(folder, "msrun_log") if msrun_workers else log_path
        raise RuntimeError(f"trainer exited with {done.returncode}: {error_line(where)} (logs: {where})")
    return {**steps_per_second(logs), "wall_s": round(wall, 1)}


def steps_per_second(logging_dir):
    files = glob.glob(os.path.join(logging_dir, "*", "steps.csv"))
    if not files:
        raise RuntimeError(f"no steps.csv under {logging_dir}")
    with open(files[0], encoding="utf-8") as f:
        rows = [(int(r["step"]), float(r["time"])) for r in csv.DictReader(f)]
    if len(rows) < 3:
        raise RuntimeError(f"{files[0]}: only {len(rows)} steps logged")
    (first_step, first_time), (last_step, last_time) = rows[0], rows[-1]
    return {"steps_per_s": (last_step - first_step) / (last_time - first_time), "steps": last_step}


@contextlib.contextmanager
def kept_on_failure(prefix):
    """A temporary folder, removed after success and kept (its logs) after a failure."""
    folder = tempfile.mkdtemp(prefix=prefix)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def error_line(path):
    """The last line naming an error in a log file (or in the logs of a folder), else its last lines."""
    files = sorted(glob.glob(os.path.join(path, "*.log"))) if os.path.isdir(path) else [path]
    for name in files:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if re.search(r"\w+(Error|Exception)\b", line)]
        except OSError:
            continue
        if lines:
            return lines[-1][:300]
    return last_lines(files[0], 2) if files else ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- the extras

def latent_caching(threads, timeout_s):
    result = {}
    with kept_on_failure("bench_cache_") as folder:
        toml = dataset_toml(folder, 2)
        for label, flags in (("uncached", []), ("cached", ["--cache_latents"])):
            run_dir = os.path.join(folder, label)
            os.makedirs(run_dir)
            result[label] = run_trainer(run_dir, ["--dataset_config", toml, *flags], threads, timeout_s)
        probe = subprocess.run([sys.executable, "-m", "bench.cache_probe", *TI_ARGS, "--dataset_config", toml,
                                "--cache_latents", "--output_dir", os.path.join(folder, "probe")],
                               cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                               env=dict(os.environ, GLOG_v="3", **thread_env(threads)))
        if probe.returncode != 0:
            raise RuntimeError(f"cache probe exited with {probe.returncode}: {probe.stderr.strip()[-300:]}")
        result.update(json.loads(probe.stdout.strip().splitlines()[-1]))
    result["speedup"] = result["cached"]["steps_per_s"] / result["uncached"]["steps_per_s"]
    return result


def recompute(threads, timeout_s, say=print):
    """Largest latent side where ours runs the SD1.5 UNet fwd+bwd both with and without checkpointing."""
    tried = []
    for latent in (64, 48, 32):
        runs = {}
        for checkpointing in (False, True):
            runs[checkpointing] = run_case("unet_fwd_bwd_sd15_64", 2, threads, timeout_s, say=say,
                                           overrides={"latent": latent, "checkpointing": checkpointing},
                                           only=("ours",))
            if runs[checkpointing]["status"] != "ok":
                break  # without checkpointing it does not fit: try the next size
        if len(runs) == 2 and all(r["status"] == "ok" for r in runs.values()):
            plain, ckpt = runs[False], runs[True]
            return {"latent": latent, "tried": tried,
                    "plain": _brief(plain), "checkpointing": _brief(ckpt),
                    "memory_saved_mb": plain["ours_peak_mb"] - ckpt["ours_peak_mb"],
                    "time_paid_ratio": ckpt["ours_s"] / plain["ours_s"]}
        tried.append({"latent": latent, "errors": [r.get("error") for r in runs.values() if r.get("error")]})
    raise RuntimeError(f"no latent size fitted with and without checkpointing: {tried}")


def _brief(result):
    return {k: result.get(k) for k in ("ours_s", "ours_first_s", "ours_peak_mb")}


def data_parallel(threads, timeout_s):
    with kept_on_failure("bench_dp_") as folder:
        runs = {}
        for label, batch, workers in (("one_process_batch2", 2, 0), ("msrun_2_workers_batch1", 1, 2)):
            run_dir = os.path.join(folder, label)
            os.makedirs(run_dir)
            runs[label] = run_trainer(run_dir, ["--dataset_config", dataset_toml(run_dir, batch), "--cache_latents"],
                                      threads, timeout_s, msrun_workers=workers)
    runs["speedup"] = runs["msrun_2_workers_batch1"]["steps_per_s"] / runs["one_process_batch2"]["steps_per_s"]
    return runs


def compile_times(case_results):
    """First call minus a steady call, per measured case (seconds)."""
    found = {}
    for name, r in case_results.items():
        if r.get("ours_first_s") is not None and r.get("ours_s") is not None:
            found[name] = {"ours_compile_s": r["ours_first_s"] - r["ours_s"],
                           "ref_warmup_s": (r["ref_first_s"] - r["ref_s"]) if r.get("ref_s") else None}
    if not found:
        raise RuntimeError("no case with a first and a steady call was measured (run cases with --extras)")
    return {"cases": found}


def quickstart(threads, timeout_s):
    with tempfile.TemporaryDirectory(prefix="bench_quickstart_") as out:
        log_path = os.path.join(out, "quickstart.log")
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            done = subprocess.run(["bash", os.path.join(ROOT, "examples", "quickstart.sh")], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout_s,
                                  env=dict(os.environ, OUT=out, GLOG_v="3", **thread_env(threads)))
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"quickstart.sh exited with {done.returncode}: {last_lines(log_path, 2)}")
        images = glob.glob(os.path.join(out, "images", "*.png"))
    return {"wall_s_total": round(wall, 1), "images": len(images),
            "note": "includes creating models/tiny-sd15.safetensors when it is missing"}


def format_extras(extras):
    lines = ["extras:"]
    for name, r in extras.items():
        if r.get("status") != "ok":
            lines.append(f"  {name:15s} FAILED: {r.get('error')}")
            continue
        if name == "latent_caching":
            lines.append(f"  {name:15s} uncached {r['uncached']['steps_per_s']:.2f} steps/s, cached "
                         f"{r['cached']['steps_per_s']:.2f} steps/s (x{r['speedup']:.2f}); one-off cache of "
                         f"{r['images']} images {r['cache_s']:.1f} s (VAE encoder compile included)")
        elif name == "recompute":
            lines.append(f"  {name:15s} SD1.5 UNet fwd+bwd {r['latent']}x{r['latent']}: checkpointing saves "
                         f"{r['memory_saved_mb']:.0f} MiB peak ({r['plain']['ours_peak_mb']:.0f} -> "
                         f"{r['checkpointing']['ours_peak_mb']:.0f}), costs x{r['time_paid_ratio']:.2f} time")
        elif name == "data_parallel":
            lines.append(f"  {name:15s} 1 process B2 {r['one_process_batch2']['steps_per_s']:.2f} steps/s, msrun 2 "
                         f"workers B1 {r['msrun_2_workers_batch1']['steps_per_s']:.2f} steps/s (x{r['speedup']:.2f})")
        elif name == "compile":
            parts = [f"{case} {v['ours_compile_s']:.1f} s" for case, v in r["cases"].items()]
            lines.append(f"  {name:15s} ours first-step compile: " + ", ".join(parts))
        elif name == "quickstart":
            lines.append(f"  {name:15s} bash examples/quickstart.sh: {r['wall_s_total']:.0f} s, {r['images']} image(s)")
    return "\n".join(lines)
