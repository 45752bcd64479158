"""What the command lines of hf_vit (`hf-vit` and the recipes) share: flags built from an argument dataclass, so that
an option is declared once (the recipes parse the same dataclasses with `HfArgumentParser`) and takes both spellings,
`--dry-run` and `--dry_run`; and the error contract (STYLE.md, "Errors").
"""

import argparse
import dataclasses
import os
import sys
import types
import typing


class ArgumentParser(argparse.ArgumentParser):
    """argparse with every `--long-option` also accepted as `--long_option` (the recipes' spelling)."""

    def add_argument(self, *names, **kwargs):
        aliases = ["--" + name[2:].replace("-", "_") for name in names if name.startswith("--") and "-" in name[2:]]
        return super().add_argument(*names, *[a for a in aliases if a not in names], **kwargs)


def _value_type(annotation):
    """`str | None` -> str, `list[int] | None` -> list[int], `bool` -> bool."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return annotation


def add_dataclass_arguments(parser, cls, positional=()) -> None:
    """
    Add one argument per field of dataclass `cls` to an argparse parser: `positional` fields in that order as
    positional arguments, the others as `--name-with-dashes` / `--name_with_underscores` options with the field's
    default and help; a bool that defaults to False is a flag.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in positional:
        parser.add_argument(name, help=fields[name].metadata.get("help"))
    for name, f in fields.items():
        if name in positional:
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        kind = _value_type(f.type)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        options = {"help": f.metadata.get("help"), "dest": name}
        if kind is bool and default is False:
            parser.add_argument(*flags, action="store_true", **options)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(*flags, type=item, nargs="+", default=default, required=required, **options)
        else:
            parser.add_argument(*flags, type=kind, default=default, required=required, **options)


def dataclass_from_arguments(cls, namespace):
    """The `cls` instance of a parsed namespace (see `add_dataclass_arguments`)."""
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})




# ---------------------------------------------------------------------------------------------------------------------
# The error contract: a user error (a missing or invalid file, argument or config, a refused resume, an unreadable
# image) is one or a few lines on stderr naming what was wrong, and exit code 2; never a traceback, unless asked for.

DEBUG_FLAG = "--debug"
DEBUG_ENVIRONMENT_VARIABLE = "HF_VIT_DEBUG"
# What library code raises for bad input (its messages name the field or file); anything else is a bug and keeps its
# traceback. HFValidationError (a bad Hub id) is a ValueError.
USER_ERRORS = (ValueError, OSError)


def debug_requested(argv: list[str]) -> bool:
    """`--debug` among the arguments (removed from `argv`), or HF_VIT_DEBUG=1 in the environment."""
    wanted = DEBUG_FLAG in argv
    while DEBUG_FLAG in argv:
        argv.remove(DEBUG_FLAG)
    return wanted or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "") not in ("", "0")


def describe_error(error: BaseException) -> str:
    """The message of a user error, without Python's decoration (`[Errno 2] ...`)."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error).strip() or type(error).__name__


def report_user_error(prog: str, error: BaseException) -> int:
    """Print a user error the way every hf_vit command does; return the exit code (2)."""
    rank = os.environ.get("RANK")
    where = f"[process {rank}] " if rank not in (None, "0") and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{where}{prog}: error: {describe_error(error)}", file=sys.stderr)
    print(f"{where}{prog}: (add {DEBUG_FLAG} or set {DEBUG_ENVIRONMENT_VARIABLE}=1 to see the traceback)",
          file=sys.stderr)
    return 2


def run_command(main, argv=None, prog: str | None = None) -> int:
    """
    Run `main(argv)` under the error contract: its return value (None = 0) is the exit code; a user error prints one
    message and returns 2; `--debug` / HF_VIT_DEBUG=1 lets the exception through with its traceback. For recipes:
    `sys.exit(run_command(main))`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0])
    if debug_requested(argv):
        code = main(argv)
        return code if isinstance(code, int) else 0
    try:
        code = main(argv)
    except USER_ERRORS as error:
        return report_user_error(prog, error)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def check_model_location(model: str) -> str:
    """
    A model argument (a local folder or a Hub id) checked before transformers tries it: a folder must hold
    config.json; a path that does not exist is said so (transformers would take it for a malformed Hub id).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise FileNotFoundError(
                f"{model} has no config.json, so it is not a saved model folder (save_pretrained writes config.json "
                "and model.safetensors); give a model folder or a Hub id 'namespace/name'.")
        return model
    if os.path.exists(model):
        raise ValueError(f"{model} is a file; give a model folder (with config.json) or a Hub id 'namespace/name'.")
    try:
        looks_local = model.startswith((".", "/", "~")) or os.sep in model.strip(os.sep).replace("/", "", 1)
        validate_repo_id(model)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise FileNotFoundError(f"model folder {model} does not exist (and it is not a Hub id 'namespace/name').")
    return model


__all__ = [
    "ArgumentParser",
    "USER_ERRORS",
    "add_dataclass_arguments",
    "check_model_location",
    "dataclass_from_arguments",
    "report_user_error",
    "run_command",
]
