"""Publish a trained model to the Hugging Face Hub: a run folder becomes a validated, documented model repository.

Assembles the repository (safetensors weights, configs, the remote-code files, a model card rendered from
model_cards/template.md with the run's arguments and results, eval_results.json, run_args.json; EMA weights in
ema/; never checkpoints/ or logs/), checks that it loads where hf_vit is not installed and classifies a photo through
`pipeline`, then uploads it in one commit. The token comes from HF_TOKEN or `hf auth login`, never the command line.

    python recipes/push_to_hub.py --run_dir outputs/digits --repo_id you/vit-digits --dry_run   # look first
    python recipes/push_to_hub.py --run_dir outputs/digits --repo_id you/vit-digits             # publish
    # options: --private, --revision BRANCH, --create_pr, --commit_message TEXT, --card_data FILE.yaml,
    #          --stage_dir DIR (keep the assembled repository); a YAML of these arguments may come first.
"""

import sys

from hf_vit.training import parse_recipe_args
from hf_vit.training.hub import HubPublishError, PushArguments, publish_run


def main(argv=None):
    (args,) = parse_recipe_args((PushArguments,), argv)
    return publish_run(
        args.run_dir, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        commit_message=args.commit_message, dry_run=args.dry_run, card_data=args.card_data, stage_dir=args.stage_dir,
    )


if __name__ == "__main__":
    try:
        main()
    except (HubPublishError, ValueError, FileNotFoundError) as error:
        print(f"push_to_hub: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
