"""The documented commands stay true to the code.

Every shell command in a ```bash block of README.md and of the guides in docs/en and docs/zh is checked:
our three CLIs parse it with their real parsers (plus the checks their main() does before loading a model),
dataset configs are validated against the trainer's schema with their image folders resolved, referenced
files must exist in the repository (or be something an earlier documented command writes: `output/...`,
`models/...`), msrun lines go through MindSpore's own msrun parser. The README tour is run end to end on the
tiny preset, and the English and Chinese guides must hold the same files and the same commands.
"""
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train_network
import train_textual_inversion
from library.config.blueprint import generate_blueprint
from library.models.configs import SPEC_NAMES
from library.sampling import cli as gen_img_cli
from library.training import session

REPO = Path(__file__).resolve().parent.parent
GUIDE_DIRS = (REPO / "docs" / "en", REPO / "docs" / "zh")
# Paths that documented commands write (the tour makes them); a command may read them without them existing.
PRODUCED_PREFIXES = ("output/", "models/")
TINY_PRESETS = tuple(name for name in SPEC_NAMES if name.startswith("tiny-"))
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


# ----------------------------------------------------------------------------------------------- extraction
def bash_blocks(path):
    return re.findall(r"^```bash\n(.*?)^```", Path(path).read_text(encoding="utf-8"), re.M | re.S)


def split_commands(text):
    """Shell text -> list of commands (token lists): continuation lines joined, comments dropped, `&&` split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        current = []
        for token in tokens + ["&&"]:
            if token != "&&":
                current.append(token)
            elif current:
                commands.append(current)
                current = []
    return commands


def without_env(tokens):
    """Leading `NAME=value` assignments are the environment, not the command."""
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    return tokens


def doc_commands(path):
    return [without_env(c) for block in bash_blocks(path) for c in split_commands(block)]


def guide_files(folder):
    return sorted(p.name for p in folder.glob("*.md"))


def all_documented_commands():
    cases = []
    for doc in [REPO / "README.md"] + [d / name for d in GUIDE_DIRS for name in guide_files(d)]:
        for i, command in enumerate(doc_commands(doc)):
            cases.append(pytest.param(command, id=f"{doc.relative_to(REPO)}#{i}"))
    return cases


# ----------------------------------------------------------------------------------------------- checks
def check_readable(path, what):
    """A file a command reads: in the repository, or written by an earlier documented command."""
    normalized = os.path.normpath(path)
    if normalized.startswith(tuple(os.path.normpath(p) + os.sep for p in PRODUCED_PREFIXES)):
        return
    assert (REPO / path).exists(), f"{what} {path}: no such file in the repository"


def check_model(name, what):
    if name in TINY_PRESETS:
        return
    check_readable(name, what)


def _trainer_parser(script):
    if script == "train_textual_inversion.py":
        return session.build_parser("", False, train_textual_inversion.add_textual_inversion_arguments), False
    return session.build_parser("", True, train_network.add_network_arguments), True


def check_trainer(script, argv):
    parser, support_dropout = _trainer_parser(script)
    if "--output_config" in argv:  # writes a file and exits: only check that it parses
        args = parser.parse_args(argv)
        assert args.config_file, "--output_config needs --config_file"
        return
    args = session.parse_arguments(parser, argv)
    if script == "train_textual_inversion.py":
        assert args.token_string, "train_textual_inversion.py needs --token_string"
        train_textual_inversion.template_kind(args)
    else:
        train_network.check_network_options(args)
    check_model(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
    for option in ("sample_prompts", "weights", "network_weights", "resume", "vae", "config_file"):
        if getattr(args, option, None):
            check_readable(getattr(args, option), f"--{option}")
    for path in getattr(args, "base_weights", None) or []:
        check_readable(path, "--base_weights")
    assert args.dataset_config or args.train_data_dir, f"{script}: no --dataset_config or --train_data_dir"
    if args.dataset_config:
        check_readable(args.dataset_config, "--dataset_config")
    # the trainer's own schema (caption dropout only for LoRA) and every image folder resolved
    blueprint = generate_blueprint(args, support_dropout=support_dropout)
    assert blueprint.datasets and all(d.subsets for d in blueprint.datasets)


def check_gen_img(argv, caplog):
    args = gen_img_cli.build_parser().parse_args(argv)
    gen_img_cli._check_args(args)  # what main() checks before loading the model (sampler names, counts)
    check_model(args.ckpt, "--ckpt")
    for path in args.textual_inversion_embeddings + args.network_weights:
        check_readable(path, "embedding/LoRA file")
    if args.from_file:
        check_readable(args.from_file, "--from_file")
    if args.prompt:
        from library.diffusion.prompt_file import parse_prompt_line

        caplog.clear()
        with caplog.at_level(logging.WARNING):
            parse_prompt_line(args.prompt)
        assert "unsupported prompt option" not in caplog.text, caplog.text


def check_msrun(argv, caplog, monkeypatch):
    from mindspore.parallel.cluster.run import get_args

    monkeypatch.setattr(sys, "argv", ["msrun"] + argv)
    launch = get_args()
    assert 1 <= launch.local_worker_num <= launch.worker_num
    check_python([launch.task_script] + launch.task_script_args, caplog, monkeypatch)


# The options of tools/*.py that name files the command reads.
TOOL_INPUTS = ("model", "model_file", "models", "sd_model", "model_org", "model_tuned", "file", "input", "embeddings",
               "ckpt")


def check_tool(script, argv):
    """A tools/ script: its real parser takes the command, and every file it reads exists or is produced."""
    import importlib

    module = importlib.import_module("tools." + Path(script).stem)
    args = module.build_parser().parse_args(argv)
    for option in TOOL_INPUTS:
        value = getattr(args, option, None)
        for path in ([value] if isinstance(value, str) else value or []):
            check_readable(path, f"{script} {option}")


def check_python(argv, caplog, monkeypatch):
    script, rest = argv[0], argv[1:]
    if script.startswith("tools/") and script.endswith(".py"):
        check_readable(script, "tool")
        check_tool(script, rest)
        return
    if script == "-m":
        assert rest[0] == "pytest", f"unexpected module {rest[0]}"
        for path in [a for a in rest[1:] if not a.startswith("-")]:
            check_readable(path, "pytest path")
        return
    if script == "gen_img.py":
        check_gen_img(rest, caplog)
    elif script in ("train_textual_inversion.py", "train_network.py"):
        check_trainer(script, rest)
    else:
        pytest.fail(f"unknown script {script}")


def check_command(tokens, caplog, monkeypatch, workdir):
    """`workdir` sees the repository's examples/ like the repository root does; what a check creates (gen_img
    makes its --outdir) lands there."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(workdir)
    program, argv = tokens[0], tokens[1:]
    if program == "python":
        check_python(argv, caplog, monkeypatch)
    elif program == "pip":
        assert argv[:2] == ["install", "-r"], f"pip: expected `pip install -r FILE`, got {argv}"
        check_readable(argv[2], "pip requirements file")
    elif program == "bash":
        check_readable(argv[0], "script")
    elif program == "msrun":
        check_msrun(argv, caplog, monkeypatch)
    else:
        pytest.fail(f"no check for the command `{program}`: teach tests/test_docs_commands.py about it")


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("command", all_documented_commands())
def test_documented_command_is_valid(command, caplog, monkeypatch, tmp_path):
    try:
        check_command(command, caplog, monkeypatch, tmp_path)
    except SystemExit as e:  # argparse rejected an option
        pytest.fail(f"`{shlex.join(command)}` does not parse (exit {e.code})")


def test_readme_fresh_machine_commands_are_the_first_block():
    first = split_commands(bash_blocks(REPO / "README.md")[0])
    assert first == [["pip", "install", "-r", "requirements.txt"], ["bash", "examples/quickstart.sh"],
                     ["pip", "install", "-r", "requirements-dev.txt"], ["python", "-m", "pytest", "-q", "tests"]]


def test_quickstart_script_commands_are_valid(caplog, monkeypatch, tmp_path):
    text = (REPO / "examples" / "quickstart.sh").read_text(encoding="utf-8").replace("$OUT", "output/quickstart")
    python_lines = [c for c in split_commands(text) if c and c[0] == "python"]
    assert [c[1] for c in python_lines] == ["train_textual_inversion.py", "gen_img.py"]
    for i, command in enumerate(python_lines):
        check_command(command, caplog, monkeypatch, tmp_path / str(i))


def test_english_and_chinese_guides_match():
    english, chinese = (guide_files(d) for d in GUIDE_DIRS)
    assert english == chinese and len(english) >= 7
    for name in english:
        en_commands, zh_commands = (doc_commands(d / name) for d in GUIDE_DIRS)
        assert en_commands == zh_commands, f"{name}: the English and Chinese pages document different commands"
        zh_text = (GUIDE_DIRS[1] / name).read_text(encoding="utf-8")
        assert re.search(r"[\u4e00-\u9fff]", zh_text), f"docs/zh/{name} has no Chinese text"


def test_every_guide_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for folder in GUIDE_DIRS:
        for name in guide_files(folder):
            assert f"({folder.relative_to(REPO).as_posix()}/{name})" in readme, f"README does not link {name}"


def test_relative_links_resolve():
    for doc in [REPO / "README.md"] + [d / name for d in GUIDE_DIRS for name in guide_files(d)]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: broken link {target}"


def run_blocks(blocks, cwd):
    """Run documented blocks at the same time, each in its own shell, its commands in order (our scripts by
    absolute path, with this Python). Graph compilation is mostly single-threaded, so the blocks together take
    little more wall time than the longest one."""
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=str(REPO))
    running = []
    for i, block in enumerate(blocks):
        line = " && ".join(shlex.join([sys.executable, str(REPO / c[1])] + c[2:]) for c in block)
        log = open(cwd / f"block{i}.log", "w", encoding="utf-8")
        running.append((block, log, subprocess.Popen(["bash", "-c", line], cwd=cwd, env=env, stdout=log,
                                                     stderr=subprocess.STDOUT, start_new_session=True)))
    try:
        for block, log, process in running:
            process.wait()
            log.close()
            output = Path(log.name).read_text(encoding="utf-8")
            assert process.returncode == 0, f"{[shlex.join(c) for c in block]} failed:\n{output[-4000:]}"
    finally:  # an interrupted test run leaves no trainer behind (the shell and its children: one group each)
        for _, log, process in running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()


def test_readme_tour_runs_end_to_end(tmp_path):
    """Every command of the tour (the README's bash blocks after the fresh-machine one) runs as written, from a
    folder that sees the repository's examples/. The blocks are independent (each trainer makes the seeded tiny
    model if it is missing, atomically), so they run concurrently."""
    blocks = [split_commands(block) for block in bash_blocks(REPO / "README.md")[1:]]
    scripts = ("train_textual_inversion.py", "train_network.py", "gen_img.py")
    assert len(blocks) >= 3 and all(c[0] == "python" and c[1] in scripts for b in blocks for c in b), blocks
    (tmp_path / "examples").symlink_to(REPO / "examples")  # relative paths as in the repository root
    run_blocks(blocks, tmp_path)

    from library.formats.embeddings import read_embedding
    from library.formats.lora import read_lora_file

    embedding = read_embedding(tmp_path / "output" / "mytoy.safetensors")
    assert embedding.num_vectors == 2 and np.all(np.isfinite(embedding.vectors["emb"]))
    tensors, metadata = read_lora_file(tmp_path / "output" / "mytoy_lora.safetensors")
    assert metadata["ss_network_dim"] == "4" and int(metadata["ss_num_reg_images"]) > 0
    assert any(k.startswith("lora_te_") for k in tensors) and any(k.startswith("lora_unet_") for k in tensors)
    images = sorted((tmp_path / "output" / "images").glob("*.png"))
    assert len(images) == 2
    texts = [Image.open(p).text["parameters"] for p in images]
    assert any('TI hashes: "mytoy: ' in t for t in texts) and any('Lora hashes: "mytoy_lora: ' in t for t in texts)
