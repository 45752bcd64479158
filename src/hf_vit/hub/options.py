"""The publishing options, declared once.

`PublishOptions` says how a folder is published; everything else derives from it: `PushArguments` (the folder, the
repository and the dry run on top) is what `recipes/push_to_hub.py` parses and what `hf-vit push` builds its flags
from, `publish_run` takes exactly these fields as keywords, and the training recipes take them with a `hub_` prefix
(`--hub_private`, `--hub_revision`, ...) next to `--push_to_hub NAMESPACE/NAME`.
"""

import dataclasses
from dataclasses import dataclass, field


@dataclass
class PublishOptions:
    """How a model folder goes to the Hub (the repository id is given beside these)."""

    private: bool = field(default=False, metadata={"help": "Create the repository private (ignored if it exists)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created from main if missing)."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request against main instead of committing."})
    commit_message: str | None = field(
        default=None, metadata={"help": "Commit title (default: names the model and its test accuracy)."})
    card_data: str | None = field(
        default=None, metadata={"help": "Model card data YAML (default: the card data shipped for the run's data set)."})

    @classmethod
    def from_prefixed(cls, source, prefix: str) -> "PublishOptions":
        """The options held by `source` as `<prefix><name>` attributes (e.g. a recipe's `hub_private`)."""
        return cls(**{f.name: getattr(source, prefix + f.name) for f in dataclasses.fields(cls)})


@dataclass
class PushArguments(PublishOptions):
    """`hf-vit push` and `recipes/push_to_hub.py`: which folder goes to which Hub repository, and how."""

    run_dir: str = field(kw_only=True, metadata={"help": "Run folder (from a recipe) or any hf_vit model folder."})
    repo_id: str = field(kw_only=True, metadata={"help": "Hub repository, 'namespace/name' (created if missing)."})
    stage_dir: str | None = field(
        default=None, kw_only=True,
        metadata={"help": "Keep the assembled repository in this new or empty folder (default: a temporary one)."})
    dry_run: bool = field(
        default=False, kw_only=True,
        metadata={"help": "Assemble and validate, print the files and the card, send nothing."})


def prefixed_options(prefix: str, help_prefix: str = "") -> type:
    """A dataclass holding every `PublishOptions` field as `<prefix><name>` (same types, defaults and help), for
    argument schemas that publish after doing something else (the training recipes)."""
    fields = [
        (prefix + f.name, f.type, field(default=f.default, metadata={"help": help_prefix + f.metadata["help"]}))
        for f in dataclasses.fields(PublishOptions)
    ]
    return dataclasses.make_dataclass(f"Prefixed{PublishOptions.__name__}", fields)


__all__ = ["PublishOptions", "PushArguments", "prefixed_options"]
