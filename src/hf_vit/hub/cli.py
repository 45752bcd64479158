"""`hf-vit card` and `hf-vit push`: render a model card, publish a run folder to the Hub (see `hf_vit.hub.publish`).
`push` takes exactly the options of `PushArguments`, as `recipes/push_to_hub.py` does."""

import os
import sys

from ..cli_support import add_dataclass_arguments, dataclass_from_arguments
from .options import PushArguments


def _card(args) -> int:
    from .cards import check_model_card, render_model_card

    try:
        # Without a repository id the card is titled after the folder (its snippets say "your-name/<folder>").
        repo_id = args.repo_id or f"your-name/{os.path.basename(os.path.normpath(args.folder))}"
        card = render_model_card(args.folder, repo_id, card_data=args.card_data, template_path=args.template)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-vit card: {error}", file=sys.stderr)
        return 2
    problems = check_model_card(card.content)
    if args.output:
        with open(args.output, "w") as f:
            f.write(card.content)
    else:
        print(card.content)
    for problem in problems:
        print(f"hf-vit card: warning: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _push(args) -> int:
    from .publish import HubPublishError, push

    try:
        push(dataclass_from_arguments(PushArguments, args))
    except (HubPublishError, ValueError, FileNotFoundError) as error:
        print(f"hf-vit push: {error}", file=sys.stderr)
        return 1
    return 0


def add_subcommand(subparsers) -> None:
    card = subparsers.add_parser("card", help="Render the model card (README.md) of a run or model folder.")
    card.add_argument("folder", help="Run folder or hf_vit model folder")
    card.add_argument("--repo-id", help="Hub id used in the card's title and snippets (default: your-name/<folder name>)")
    card.add_argument("--card-data", help="Card data YAML (default: the card data shipped for the run's data set)")
    card.add_argument("--template", help="Card template (default: the one shipped with hf_vit, model_cards/template.md)")
    card.add_argument("--output", "-o", help="Write the card here instead of printing it")
    card.set_defaults(run=_card)

    push = subparsers.add_parser(
        "push", help="Publish a run folder to the Hub (validated first; token from HF_TOKEN or `hf auth login`).")
    add_dataclass_arguments(push, PushArguments, positional=("run_dir", "repo_id"))
    push.set_defaults(run=_push)
