"""Does masked patch prediction help? The paper's claim (section 4.6) at small scale, end to end, in one command.

1. A random initialisation of the study's ViT, saved (the "scratch" starting point: same architecture and seed).
2. Masked patch prediction pre-training on every training image (labels unused), one run per variant:
   3-bit mean colour at 50% (the paper's), the 4x4 "downsampled" target, attention-guided masking (AttMask), and the
   15% corruption rate of the paper's comparison; and its successor, a masked autoencoder (MAE, 75% hidden,
   `pretrain_mae.py` with `configs/fashion_mnist_mae.yaml`: the same encoder, trained for the pre-training wall time
   of the paper's MPP setting).
3. Few-shot linear accuracy (1/5/10/25 shots, test set) of the frozen features: random initialisation vs each
   pre-training.
4. Fine-tuning from each starting point with 1% and 10% of the labels, the same recipe and number of steps for all.
5. `results.json` and `table.md` in the study folder (docs/mpp.md shows them).

    python recipes/mpp_study.py --dataset /usr/share/datasets/fashion-mnist --out outputs/mpp_study
    python recipes/mpp_study.py --dataset digits --out outputs/mpp_smoke --quick     # a minute: every step, tiny

Each run is a subprocess of the recipes (`pretrain_mpp.py`, `pretrain_mae.py`, `finetune.py`), so every run folder is an ordinary one
(run_args.json, eval_results.json); a run whose folder already holds eval_results.json is not repeated, so an
interrupted study continues where it stopped.
"""

import argparse
import json
import os
import subprocess
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
PRETRAIN_CONFIG = os.path.join(HERE, "configs", "fashion_mnist_mpp.yaml")
MAE_CONFIG = os.path.join(HERE, "configs", "fashion_mnist_mae.yaml")
FINETUNE_CONFIG = os.path.join(HERE, "configs", "fashion_mnist_mpp_finetune.yaml")

# name -> (description, extra recipe arguments, recipe script); masked patch prediction runs with --pretrain-config,
# MAE with --mae-config.
PRETRAININGS = {
    "mpp_mean_color_50": ("3-bit mean colour, 50% corrupted (the paper's)", [], "pretrain_mpp.py"),
    "mpp_downsampled_50": ("4x4 sub-patch 3-bit colours, 50%", ["--mpp_target", "downsampled"], "pretrain_mpp.py"),
    "mpp_attmask_50": ("mean colour, 50%, attention-guided (AttMask)", ["--masking", "attmask"], "pretrain_mpp.py"),
    "mpp_mean_color_15": ("mean colour, 15% corrupted", ["--mask_ratio", "0.15"], "pretrain_mpp.py"),
    "mae_75": ("masked autoencoder (MAE), 75% hidden, equal wall time", [], "pretrain_mae.py"),
}
SHOTS = (1, 5, 10, 25)


def run(command, log_path) -> float:
    """Run a recipe in a subprocess, its output to `log_path`; the wall time in seconds (raises on failure)."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_MININTERVAL": "30"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}); see {log_path}")
    return time.perf_counter() - started


def results_of(folder) -> dict | None:
    path = os.path.join(folder, "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_random_init(pretrain_config, common, out_dir, seed) -> None:
    """The scratch starting point: the study's MPP model as initialised (the same seed as the pre-trainings)."""
    from accelerate.utils import set_seed

    from hf_vit.data import DataArguments
    from hf_vit.training import ModelArguments, build_processor, parse_recipe_args
    from hf_vit.training.mpp import MaskedPatchArguments, MaskedPatchRecipe, MaskedPatchTrainArguments

    model_args, data_args, train_args, mpp_args = parse_recipe_args(
        (ModelArguments, DataArguments, MaskedPatchTrainArguments, MaskedPatchArguments), [pretrain_config, *common]
    )
    set_seed(seed)
    model = MaskedPatchRecipe(model_args, data_args, train_args, mpp_args).build_model()
    model.save_pretrained(out_dir)
    build_processor(model_args, model).save_pretrained(out_dir)


def fewshot_of(folder, dataset_args, shots, seed) -> dict:
    """Few-shot linear accuracy on the test set of a model folder's frozen features (mean patch token and class
    token), with shots drawn from the training split and the ridge strength chosen on a held-out part of it."""
    from hf_vit import ViTForMaskedAutoencoding, ViTForMaskedPatchPrediction, ViTImageProcessor
    from hf_vit.evaluation.fewshot import FewShotEvaluator
    from hf_vit.data import DataArguments, ImageClassificationCollator, load_image_classification_data
    from hf_vit.training import parse_recipe_args
    from hf_vit.training.mpp import PatchRepresentation
    from hf_vit.transformers_vit_format import checkpoint_architectures

    (data_args,) = parse_recipe_args((DataArguments,), dataset_args)
    data = load_image_classification_data(data_args)
    is_mae = "ViTForMaskedAutoencoding" in checkpoint_architectures(folder, {})
    model = (ViTForMaskedAutoencoding if is_mae else ViTForMaskedPatchPrediction).from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    evaluator = FewShotEvaluator(data.train, data.test, ImageClassificationCollator(processor), shots=shots, seed=seed)
    return {"mean_patch": evaluator(PatchRepresentation(model)), "class_token": evaluator(model)}


def markdown_table(results) -> str:
    lines = []
    fractions = results["label_fractions"]
    header = "| starting point | " + " | ".join(f"fine-tuned, {f['name']} labels" for f in fractions)
    header += " | " + " | ".join(f"{k}-shot linear" for k in results["shots"]) + " | pre-training time |"
    lines += [header, "|" + "---|" * (2 + len(fractions) + len(results["shots"]))]
    for name, entry in results["starting_points"].items():
        cells = [entry["description"]]
        for fraction in fractions:
            ft = entry["finetune"].get(fraction["name"])
            cells.append(f"{ft['test_accuracy']:.2%}" if ft else "-")
        for k in results["shots"]:
            value = entry["fewshot"]["mean_patch"].get(f"fewshot/{k}shot_accuracy")
            cells.append(f"{value:.2%}" if value is not None else "-")
        cells.append(f"{entry['pretrain_seconds'] / 60:.1f} min" if entry.get("pretrain_seconds") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="/usr/share/datasets/fashion-mnist", help="Data set (see DataArguments.dataset)")
    parser.add_argument("--out", default="outputs/mpp_study", help="Study folder (runs, results.json, table.md)")
    parser.add_argument("--pretrain-config", default=PRETRAIN_CONFIG)
    parser.add_argument("--mae-config", default=MAE_CONFIG)
    parser.add_argument("--finetune-config", default=FINETUNE_CONFIG)
    parser.add_argument("--pretrainings", nargs="*", default=list(PRETRAININGS), choices=list(PRETRAININGS))
    parser.add_argument("--mae-epochs", type=float, default=None,
                        help="MAE's pre-training epochs (default: its config's, chosen for the wall time of the paper's "
                             "MPP setting; see docs/mpp.md)")
    parser.add_argument("--label-counts", nargs="*", type=int, default=[600, 6000],
                        help="Labelled training images for fine-tuning (1%% and 10%% of Fashion-MNIST's 60,000)")
    parser.add_argument("--finetune-steps", nargs="*", type=int, default=[500, 1500],
                        help="Fine-tuning steps for each label count (the same for every starting point)")
    parser.add_argument("--finetune-starts", nargs="*", default=None,
                        help="Starting points to fine-tune (default: all); the others get few-shot evaluation only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Smoke run: tiny steps everywhere")
    parser.add_argument("extra", nargs="*", help="Extra `--field value` pairs for every pre-training (after --)")
    args = parser.parse_args(argv)
    if len(args.finetune_steps) != len(args.label_counts):
        parser.error("--finetune-steps needs one value per --label-counts entry")
    unknown = sorted(set(args.finetune_starts or ()) - {"random_init", *args.pretrainings})
    if unknown:
        parser.error(f"--finetune-starts: {unknown} are not starting points of this study "
                     f"(random_init and --pretrainings {args.pretrainings})")

    os.makedirs(args.out, exist_ok=True)
    python = sys.executable
    data = ["--dataset", args.dataset, "--seed", str(args.seed), "--report_to", "none"]
    quick = ["--max_steps", "3", "--warmup_steps", "1", "--max_eval_examples", "200"] if args.quick else []
    shots = (1, 2) if args.quick else SHOTS
    results = {"dataset": args.dataset, "seed": args.seed, "shots": list(shots), "starting_points": {},
               "label_fractions": []}
    total_images = None

    starts = {"random_init": ("random initialisation (no pre-training)", None, None)}
    starts.update({name: PRETRAININGS[name] for name in args.pretrainings})
    for name, (description, extra, recipe) in starts.items():
        folder = os.path.join(args.out, name)
        entry = {"description": description, "folder": folder, "finetune": {}}
        if extra is None:
            if not os.path.isfile(os.path.join(folder, "config.json")):
                save_random_init(args.pretrain_config, data + args.extra, folder, args.seed)
        elif results_of(folder) is None:
            config = args.mae_config if recipe == "pretrain_mae.py" else args.pretrain_config
            if recipe == "pretrain_mae.py" and args.mae_epochs is not None:
                extra = [*extra, "--num_epochs", str(args.mae_epochs)]
            command = [python, os.path.join(HERE, recipe), config, *data, *quick, "--output_dir", folder, *extra,
                       *args.extra]
            print(f"[pre-train] {name}: {' '.join(command[1:])}", flush=True)
            entry["pretrain_seconds"] = run(command, folder + ".log")
        if extra is not None:
            pretrained = results_of(folder)
            entry["pretrain_seconds"] = pretrained["train_seconds"]
            entry["pretrain_validation"] = pretrained["validation"]
        entry["fewshot"] = fewshot_of(folder, [*data[:2], *(["--max_eval_examples", "200"] if args.quick else [])],
                                      shots, args.seed)
        print(f"[few-shot] {name}: {entry['fewshot']['mean_patch']}", flush=True)
        results["starting_points"][name] = entry

    for count, steps in zip(args.label_counts, args.finetune_steps):
        if total_images is None:
            from hf_vit.data import DataArguments, load_image_classification_data

            total_images = len(load_image_classification_data(DataArguments(dataset=args.dataset, validation_fraction=0)).train)
        fraction = {"name": f"{count / total_images:.0%} ({count})", "count": count, "steps": steps}
        results["label_fractions"].append(fraction)
        for name, entry in results["starting_points"].items():
            if args.finetune_starts is not None and name not in args.finetune_starts:
                continue
            folder = os.path.join(args.out, f"finetune_{count}_{name}")
            if results_of(folder) is None:
                command = [python, os.path.join(HERE, "finetune.py"), args.finetune_config, *data,
                           "--model_name_or_path", entry["folder"], "--max_train_examples", str(count),
                           "--max_steps", str(3 if args.quick else steps), "--output_dir", folder,
                           *(["--warmup_steps", "1", "--max_eval_examples", "200"] if args.quick else [])]
                print(f"[fine-tune] {name} with {count} labels: {' '.join(command[1:])}", flush=True)
                run(command, folder + ".log")
            finetuned = results_of(folder)
            entry["finetune"][fraction["name"]] = {
                "test_accuracy": finetuned["test"]["accuracy"], "train_seconds": finetuned["train_seconds"],
                "steps": finetuned["global_step"], "folder": folder,
            }
            print(f"[fine-tune] {name}, {count} labels: test accuracy {finetuned['test']['accuracy']:.4f}", flush=True)

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown_table(results)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    return results


if __name__ == "__main__":
    from hf_vit.cli_support import run_command

    sys.exit(run_command(main))
