"""What the command lines of hf_vit share: flags built from an argument dataclass, so that an option is declared once
(the recipes parse the same dataclasses with `HfArgumentParser`) and takes both spellings, `--dry-run` and
`--dry_run`."""

import dataclasses
import types
import typing


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


__all__ = ["add_dataclass_arguments", "dataclass_from_arguments"]
