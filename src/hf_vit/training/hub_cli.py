"""`hf-vit card` and `hf-vit push`: render a model card, publish a run folder to the Hub (see `training/hub.py`)."""

import sys


def _card(args) -> int:
    from .cards import check_model_card, render_model_card

    try:
        card = render_model_card(args.folder, args.repo_id, card_data=args.card_data, template_path=args.template)
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
    from .hub import HubPublishError, publish_run

    try:
        publish_run(args.folder, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
                    commit_message=args.message, dry_run=args.dry_run, card_data=args.card_data,
                    stage_dir=args.stage_dir)
    except (HubPublishError, ValueError, FileNotFoundError) as error:
        print(f"hf-vit push: {error}", file=sys.stderr)
        return 1
    return 0


def add_subcommand(subparsers) -> None:
    card = subparsers.add_parser("card", help="Render the model card (README.md) of a run or model folder.")
    card.add_argument("folder", help="Run folder or hf_vit model folder")
    card.add_argument("--repo-id", default="your-name/model", help="Hub id used in the card's snippets")
    card.add_argument("--card-data", help="Card data YAML (default: model_cards/<dataset>.yaml when it exists)")
    card.add_argument("--template", help="Card template (default: model_cards/template.md)")
    card.add_argument("--output", "-o", help="Write the card here instead of printing it")
    card.set_defaults(run=_card)

    push = subparsers.add_parser(
        "push", help="Publish a run folder to the Hub (validated first; token from HF_TOKEN or `hf auth login`).")
    push.add_argument("folder", help="Run folder or hf_vit model folder")
    push.add_argument("repo_id", help="Hub repository, namespace/name (created if missing)")
    push.add_argument("--private", action="store_true", help="Create the repository private")
    push.add_argument("--revision", help="Branch to commit to (created from main if missing)")
    push.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing to main")
    push.add_argument("--message", help="Commit message")
    push.add_argument("--card-data", help="Card data YAML")
    push.add_argument("--stage-dir", help="Keep the assembled repository in this new or empty folder")
    push.add_argument("--dry-run", action="store_true", help="Assemble and validate, print files and card, send nothing")
    push.set_defaults(run=_push)
