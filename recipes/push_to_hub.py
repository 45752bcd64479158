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

from hf_vit.cli_support import run_command
from hf_vit.hub import HubPublishError, PushArguments, push
from hf_vit.training import parse_recipe_args


def main(argv=None):
    (args,) = parse_recipe_args((PushArguments,), argv)
    return push(args)


def _command(argv) -> int:
    try:
        main(argv)
    except HubPublishError as error:  # the Hub refused or could not be reached: not a mistake in the arguments
        print(f"push_to_hub: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(_command))  # a user error: one message and exit code 2 (--debug shows the traceback)
