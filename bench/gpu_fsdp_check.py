"""One command that checks FSDP2 through `accelerate launch` on 2 GPUs in bf16: for a machine that has them.

    python bench/gpu_fsdp_check.py                                   # GPUs 0,1, a temporary folder
    python bench/gpu_fsdp_check.py --gpu_ids 2,3 --output_dir /tmp/fsdp_check
    python bench/gpu_fsdp_check.py --dry_run                         # print the commands, run nothing

hf_vit's development machine has no GPU, and Accelerate takes its FSDP path only for GPU-type devices, so this was
never run there (docs/training.md, "Beyond DDP", says what was). `tests/test_fsdp.py` proves the same things with
Accelerate's FSDP2 path switched on in 2 CPU processes (gloo) and calls the checks below on those runs, so the
checks themselves are tested; what only this script exercises is NCCL, CUDA devices, bf16 through FSDP's
`MixedPrecisionPolicy` and the `accelerate launch` command line itself.

Runs (the same tiny ViT pre-training as tests/test_fsdp.py: digits, 12 steps, AdamW, EMA, few-shot evaluation,
checkpoints at steps 6 and 12), in OUTPUT_DIR:

    fsdp_bf16     accelerate launch --config_file recipes/configs/accelerate/fsdp_8gpu.yaml --num_processes 2 ...
    fsdp_fp32     the same with --mixed_precision no
    single_fp32   python recipes/pretrain.py on one GPU, fp32, the same global batch (2 accumulated micro-batches)
    resumed       fsdp_bf16's step-6 checkpoint copied to a fresh folder, continued with `--resume latest`
    one_process   fsdp_bf16 resumed with --num_processes 1

Checks (each printed PASS / FAIL; the exit code is the number of failures):

    sharded       fsdp_* checkpoints hold torch.distributed.checkpoint folders written by both processes, every
                  matrix split in two along its first dimension; trainer_state.json says FSDP2
    precision     fsdp_bf16 ran 2 processes on GPUs with mixed precision bf16 (its eval_results.json)
    folder        every run folder and its ema/ is an ordinary hf_vit folder: hf_vit's own remote-code files and no
                  other, auto_map to them, loads with ViTForImageClassification.from_pretrained (no missing or
                  unexpected key) and with trust_remote_code=True where hf_vit is not importable, same logits
    fsdp = 1 GPU  fsdp_fp32 against single_fp32: weights, EMA weights and losses within 1e-3 (not bitwise on GPUs:
                  cuDNN convolutions run in TF32 by default and reductions run in another order)
    bf16 ~ fp32   fsdp_bf16's held-out test loss within 0.05 of fsdp_fp32's (bf16 keeps 8 bits of mantissa)
    resume        resumed ends with fsdp_bf16's weights, EMA weights and losses, within 1e-5 (a resumed GPU run
                  repeats the same kernels, but cuDNN may pick non-deterministic algorithms)
    refusal       one_process fails with the "Cannot resume ... written by 2 process(es)" message
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "recipes" / "configs" / "accelerate" / "fsdp_8gpu.yaml"
RECIPE = ROOT / "recipes" / "pretrain.py"

# The run both this script and tests/test_fsdp.py make: small enough for 2 CPU processes, long enough that the loss
# falls (the comparison then compares learning, not an initialisation), with every FSDP-sensitive part switched on.
CONFIG = """\
dataset: digits
variant: Ti/4
image_size: 16
hidden_size: 32
num_hidden_layers: 2
num_attention_heads: 2
intermediate_size: 64
representation_size: 32
augmentation: translate
max_steps: 12
batch_size: 32
learning_rate: 0.003
warmup_steps: 2
ema_decay: 0.9
eval_every_steps: 6
save_every_steps: 6
fewshot_every_steps: 0
fewshot_shots: [1, 5]
report_to: none
predict_examples: 0
"""
RESUME_FROM_STEP = 6
REFUSAL = "written by 2 process(es) with per-device batch 16"


# ---------------------------------------------------------------------------------------------------------------------
# Checks (also called by tests/test_fsdp.py on the CPU runs): each returns a list of problems, empty when it passes.


def last_checkpoint(run_dir) -> Path:
    from hf_vit.training.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(str(run_dir))
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no checkpoint")
    return Path(checkpoints[-1][1])


def check_sharded_checkpoint(run_dir, num_processes: int = 2) -> list[str]:
    """The last checkpoint's model and optimiser are torch.distributed.checkpoint folders with one file per process,
    and every matrix of the model is stored as `num_processes` pieces along its first dimension."""
    from torch.distributed.checkpoint import FileSystemReader

    checkpoint = last_checkpoint(run_dir)
    problems = []
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if not state.get("checkpoint_format", "").startswith("FSDP2"):
        problems.append(f"{checkpoint.name}: trainer_state.json says {state.get('checkpoint_format')!r}, not FSDP2")
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        written = sorted(p.name for p in (checkpoint / folder).glob("*.distcp"))
        if written != [f"__{rank}_0.distcp" for rank in range(num_processes)]:
            problems.append(f"{checkpoint.name}/{folder}: files {written}, expected one per process")
    if problems:
        return problems
    metadata = FileSystemReader(str(checkpoint / "pytorch_model_fsdp_0")).read_metadata()
    matrices = 0
    for key, entry in metadata.state_dict_metadata.items():
        size = getattr(entry, "size", None)
        if size is None or len(size) < 2:
            continue
        matrices += 1
        pieces = sorted((tuple(c.offsets), tuple(c.sizes)) for c in entry.chunks)
        rows = [sizes[0] for _, sizes in pieces]
        if len(pieces) != num_processes or sum(rows) != size[0] or any(s[1:] != tuple(size[1:]) for _, s in pieces):
            problems.append(f"{key} {tuple(size)} is stored as pieces {pieces}, not split in {num_processes} rows")
    if not matrices:
        problems.append("the model checkpoint holds no matrix")
    return problems


def _remote_logits_script() -> str:
    from hf_vit.hub.validation import HIDE_HF_VIT

    return HIDE_HF_VIT + (
        "import torch, transformers\n"
        "out = {}\n"
        "for folder in sys.argv[1:]:\n"
        "    model = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "    size = model.config.image_size\n"
        "    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))\n"
        "    with torch.no_grad():\n"
        "        out[folder] = {'module': type(model).__module__, 'logits': model(pixels).logits.tolist()}\n"
        "print(json.dumps(out))\n"
    )


def check_ordinary_folder(run_dir, scratch) -> list[str]:
    """The run folder and its ema/ are what any hf_vit run writes: the package's own remote-code files, unchanged,
    and no other; auto_map points at them; the weights load completely, with hf_vit and as remote code alike."""
    import torch

    import hf_vit
    from hf_vit import ViTForImageClassification

    package = Path(hf_vit.__file__).parent
    folders = [Path(run_dir), Path(run_dir) / "ema"]
    problems = []
    for folder in folders:
        for code in sorted(folder.glob("*.py")):
            source = package / code.name
            if not source.is_file() or source.read_bytes() != code.read_bytes():
                problems.append(f"{folder.name}/{code.name} is not one of hf_vit's remote-code files")
        config = json.loads((folder / "config.json").read_text())
        for auto_class, reference in (config.get("auto_map") or {}).items():
            if not (folder / f"{reference.split('.')[0]}.py").is_file():
                problems.append(f"{folder.name}/config.json: auto_map {auto_class} -> {reference}, which is not there")
        model, info = ViTForImageClassification.from_pretrained(folder, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if bad:
            problems.append(f"{folder.name}: from_pretrained reports {bad}")
    if problems:
        return problems
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(Path(scratch) / "modules")}
    done = subprocess.run([sys.executable, "-c", _remote_logits_script(), *map(str, folders)], capture_output=True,
                          text=True, env=env, cwd=scratch, timeout=600)
    if done.returncode != 0:
        return [f"loading as remote code without hf_vit failed: {done.stderr.strip().splitlines()[-1:]}"]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    for folder in folders:
        model = ViTForImageClassification.from_pretrained(folder).eval()
        size = model.config.image_size
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model(pixels).logits
        got = remote[str(folder)]
        if not got["module"].startswith("transformers_modules"):
            problems.append(f"{folder.name}: loaded {got['module']} instead of the folder's remote code")
        if not torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-5, rtol=0):
            problems.append(f"{folder.name}: remote-code logits differ from hf_vit's")
    return problems


def compare_runs(first, second, weights_atol: float, loss_atol: float, metric_atol: float | None = None
                 ) -> tuple[list[str], dict]:
    """
    Weights, EMA weights, and every loss and metric of eval_results.json of two run folders: (problems, the largest
    differences seen). Losses within `loss_atol`; accuracies within `metric_atol` (default: one image either way).
    The few-shot regularisation strength picked (`*_l2`) is not compared: two near-equal candidates may swap places;
    the accuracy it gives is compared.
    """
    from safetensors.torch import load_file

    problems, largest = [], {}
    for name in ("model.safetensors", "ema/model.safetensors"):
        a, b = load_file(Path(first) / name), load_file(Path(second) / name)
        if a.keys() != b.keys():
            problems.append(f"{name}: keys differ: {sorted(a.keys() ^ b.keys())}")
            continue
        largest[name] = max((a[k] - b[k]).abs().max().item() for k in a)
        if largest[name] > weights_atol:
            problems.append(f"{name}: weights differ by up to {largest[name]:.3g} (tolerance {weights_atol:g})")
    a, b = (json.loads((Path(run) / "eval_results.json").read_text()) for run in (first, second))
    if a["global_step"] != b["global_step"]:
        problems.append(f"global_step {a['global_step']} vs {b['global_step']}")
    for split in ("test", "ema_test", "validation"):
        for metric in sorted(set(a[split]) & set(b[split])):
            x, y = a[split][metric], b[split][metric]
            if isinstance(x, float) and not metric.endswith("_l2"):
                key = f"{split}/{metric}"
                largest[key] = abs(x - y)
                one_image = 1.5 / a[split].get("num_examples", 1)
                tolerance = loss_atol if "loss" in metric else (one_image if metric_atol is None else metric_atol)
                if largest[key] > tolerance:
                    problems.append(f"{key}: {x:.6g} vs {y:.6g} (tolerance {tolerance:g})")
    return problems, largest


def check_refused(returncode: int, stderr: str) -> list[str]:
    if returncode == 0:
        return ["resuming the 2-process run with 1 process was not refused"]
    if "Cannot resume from" not in stderr or REFUSAL not in stderr:
        return [f"refused without the layout message: {stderr.strip().splitlines()[-3:]}"]
    return []


# ---------------------------------------------------------------------------------------------------------------------
# The GPU runs


def _commands(out: Path, gpu_ids: str) -> dict:
    config = out / "tiny.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
              "--num_processes", "2", "--gpu_ids", gpu_ids]
    recipe = [str(RECIPE), str(config)]
    first_gpu = gpu_ids.split(",")[0]
    return {
        "fsdp_bf16": launch + recipe + ["--output_dir", str(out / "fsdp_bf16")],
        "fsdp_fp32": launch + ["--mixed_precision", "no"] + recipe + ["--output_dir", str(out / "fsdp_fp32")],
        "single_fp32": ["env", f"CUDA_VISIBLE_DEVICES={first_gpu}", sys.executable, *recipe, "--output_dir",
                        str(out / "single_fp32"), "--max_device_batch_size", "16"],
        "resumed": launch + recipe + ["--output_dir", str(out / "resumed"), "--resume", "latest"],
        "one_process": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
                        "--num_processes", "1", "--gpu_ids", first_gpu] + recipe
                       + ["--output_dir", str(out / "fsdp_bf16"), "--resume", "latest"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu_ids", "--gpu-ids", default="0,1", help="two GPU ids, e.g. 0,1")
    parser.add_argument("--output_dir", "--output-dir", default="", help="where the runs go (default: a temporary "
                        "folder, removed at the end)")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    if len(args.gpu_ids.split(",")) != 2:
        parser.error(f"--gpu_ids must name two GPUs, got {args.gpu_ids!r}")
    if args.dry_run:
        for name, command in _commands(Path(args.output_dir or "OUTPUT_DIR"), args.gpu_ids).items():
            print(f"{name}: {' '.join(command)}")
        return 0
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="hf_vit_gpu_fsdp_check_")).resolve()
    commands = _commands(out, args.gpu_ids)

    import torch

    if torch.cuda.device_count() < 2:
        print(f"needs 2 GPUs, torch sees {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny.yaml").write_text(CONFIG)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                                               os.environ.get("PYTHONPATH", "")])}
    results, figures = {}, {}

    def run(name):
        print(f"running {name}: {' '.join(commands[name])}", flush=True)
        done = subprocess.run(commands[name], cwd=ROOT, env=env, capture_output=True, text=True)
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
        return done

    for name in ("fsdp_bf16", "fsdp_fp32", "single_fp32"):
        done = run(name)
        if done.returncode != 0:
            print(f"FAIL {name} exited with {done.returncode}; see {out / (name + '.log')}")
            return 1
    resumed_checkpoints = out / "resumed" / "checkpoints"
    resumed_checkpoints.mkdir(parents=True, exist_ok=True)
    step = f"step-{RESUME_FROM_STEP:08d}"
    shutil.copytree(out / "fsdp_bf16" / "checkpoints" / step, resumed_checkpoints / step)
    done = run("resumed")
    results["resume"] = [f"resumed exited with {done.returncode}"] if done.returncode else []
    done = run("one_process")
    results["refusal"] = check_refused(done.returncode, done.stdout + done.stderr)

    results["sharded"] = check_sharded_checkpoint(out / "fsdp_bf16") + check_sharded_checkpoint(out / "fsdp_fp32")
    hardware = json.loads((out / "fsdp_bf16" / "eval_results.json").read_text())["hardware"]
    results["precision"] = [] if ("2 processes on" in hardware and "GPU" in hardware
                                  and hardware.endswith("mixed precision bf16")) else [f"hardware: {hardware}"]
    results["folder"] = []
    for name in ("fsdp_bf16", "fsdp_fp32", "single_fp32"):
        results["folder"] += [f"{name}: {p}" for p in check_ordinary_folder(out / name, out)]
    results["fsdp = 1 GPU"], figures["fsdp_fp32 vs single_fp32"] = compare_runs(
        out / "fsdp_fp32", out / "single_fp32", weights_atol=1e-3, loss_atol=1e-3)
    bf16, fp32 = (json.loads((out / run / "eval_results.json").read_text())["test"]["loss"]
                  for run in ("fsdp_bf16", "fsdp_fp32"))
    figures["test loss bf16 vs fp32"] = {"bf16": bf16, "fp32": fp32}
    results["bf16 ~ fp32"] = [] if abs(bf16 - fp32) <= 0.05 else [f"test loss {bf16:.4f} (bf16) vs {fp32:.4f}"]
    if not results["resume"]:
        results["resume"], figures["resumed vs fsdp_bf16"] = compare_runs(
            out / "resumed", out / "fsdp_bf16", weights_atol=1e-5, loss_atol=1e-5)

    print(json.dumps(figures, indent=2, default=str))
    failures = 0
    for check, problems in results.items():
        print(f"{'PASS' if not problems else 'FAIL'} {check}" + "".join(f"\n    {p}" for p in problems))
        failures += bool(problems)
    print(f"runs and logs in {out}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
