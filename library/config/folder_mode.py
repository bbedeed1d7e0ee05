"""kohya's "folder mode": without a dataset config, `--train_data_dir` / `--reg_data_dir` are PARENT folders whose
sub-folders are named `<repeats>_<class tokens>` (e.g. `10_mytoy toy`); `--in_json` makes one fine-tuning subset."""
import logging
import os

from ..errors import UserError
from .images_ext import IMAGE_EXTENSIONS

log = logging.getLogger("sdms.config")


def _has_images(folder):
    try:
        return any(os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS for n in os.listdir(folder))
    except OSError:
        return False


def _subsets_from_parent(parent, option, is_reg):
    if not os.path.isdir(parent):
        raise UserError(f"{option} {parent} does not exist or is not a folder")
    subsets = []
    ignored = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not os.path.isdir(path):
            continue
        head, _, tail = name.partition("_")
        try:
            repeats = int(head)
        except ValueError:
            ignored.append(name)
            continue
        subsets.append({"image_dir": os.path.abspath(path), "num_repeats": repeats, "class_tokens": tail,
                        "is_reg": is_reg})
    for name in ignored:
        log.warning("%s: ignoring sub-folder %r: its name does not start with '<repeats>_' (e.g. '10_%s')",
                    option, name, name)
    if not subsets:
        if _has_images(parent):
            raise UserError(
                f"{option} {parent} contains images directly, but it must be the PARENT of folders named "
                f"'<repeats>_<class tokens>' (kohya folder mode). Move the images into e.g. "
                f"{os.path.join(parent, '10_mytoken')} and keep {option} {parent}, or describe the folder with "
                f"a --dataset_config TOML (image_dir = \"{parent}\").")
        raise UserError(f"{option} {parent} has no sub-folders named '<repeats>_<class tokens>' "
                        f"(e.g. '10_mytoken'); put the images in such a sub-folder")
    return subsets


def user_config_from_args(args):
    """Build the user-config dict that a TOML would have given, from the folder-mode options."""
    train_dir = getattr(args, "train_data_dir", None)
    reg_dir = getattr(args, "reg_data_dir", None)
    in_json = getattr(args, "in_json", None)
    if in_json:
        subset = {"metadata_file": os.path.abspath(in_json)}
        if train_dir:
            subset["image_dir"] = os.path.abspath(train_dir)
        return {"datasets": [{"subsets": [subset]}]}
    if not train_dir:
        raise UserError("no training data: give --dataset_config <file.toml>, or --train_data_dir <parent folder> "
                        "(with sub-folders named '<repeats>_<class tokens>')")
    subsets = _subsets_from_parent(train_dir, "--train_data_dir", False)
    if reg_dir:
        subsets += _subsets_from_parent(reg_dir, "--reg_data_dir", True)
    return {"datasets": [{"subsets": subsets}]}
