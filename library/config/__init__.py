"""Dataset configuration: kohya's dataset TOML/JSON schema, precedence, folder mode and `--config_file`."""
from .args_file import load_config_file
from .blueprint import blueprint_from_user_config, generate_blueprint
from .cli_args import add_config_file_arguments, add_dataset_arguments
from .loader import load_config_dict
from .params import Blueprint, DatasetParams, SubsetParams
from .sanitizer import ConfigSanitizer

__all__ = [
    "Blueprint", "ConfigSanitizer", "DatasetParams", "SubsetParams", "add_config_file_arguments",
    "add_dataset_arguments", "blueprint_from_user_config", "generate_blueprint", "load_config_dict",
    "load_config_file",
]
