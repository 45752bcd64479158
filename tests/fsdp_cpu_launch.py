"""Run a recipe under Accelerate's FSDP2 integration in CPU processes (gloo): for tests only.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/fsdp_cpu_launch.py ACCELERATE_CONFIG.yaml \
        recipes/finetune.py CONFIG.yaml --output_dir ...

Accelerate 1.15 takes its FSDP path only for GPU-type devices: launched on CPU, an FSDP config silently trains with
DDP (`AcceleratorState` keeps `MULTI_CPU` and drops the plugin). torch's FSDP2 (`fully_shard`) itself works on CPU
with gloo, so this driver does what `accelerate launch --config_file ACCELERATE_CONFIG.yaml` would do on GPUs and
changes one thing:

1. the accelerate config is read by Accelerate's own launcher code (`_validate_launch_command`,
   `prepare_multi_gpu_env`) and its FSDP_* variables are set, exactly as `accelerate launch` sets them; its mixed
   precision is left out (the test compares fp32 numbers) unless FSDP_CPU_LAUNCH_MIXED_PRECISION=1;
2. when `AcceleratorState` is made with that FSDP plugin in a CPU process, it is switched to
   `DistributedType.FSDP` with the plugin, as it would be on a GPU;

then the recipe runs unchanged (`runpy`, as `python RECIPE ...`), so everything after the state (`prepare` with
`fully_shard`, `save_state`/`load_state` with torch.distributed.checkpoint, `get_state_dict`) is the recipe's and
Accelerate's own code.

With FSDP_CPU_LAUNCH_REPORT=FOLDER, each process also writes FOLDER/rank<i>.json: for the prepared model and the
EMA average, every parameter's class, local (this process's) and global shape, for the test to see the sharding.
"""

import json
import os
import runpy
import sys


def fsdp_environment(config_file: str) -> dict:
    """The FSDP_* / ACCELERATE_USE_FSDP variables `accelerate launch --config_file config_file` sets."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "recipe.py"])
    _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    keep = ("ACCELERATE_USE_FSDP", "ACCELERATE_MIXED_PRECISION") if os.environ.get(
        "FSDP_CPU_LAUNCH_MIXED_PRECISION") == "1" else ("ACCELERATE_USE_FSDP",)
    return {k: v for k, v in env.items() if k.startswith("FSDP_") or k in keep}


def take_fsdp_path_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # Both shared states: a later `AcceleratorState()` copies PartialState's over its own.
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)

    AcceleratorState.__init__ = __init__


def _describe_parameters(model) -> list:
    from torch.distributed.tensor import DTensor

    return [
        {"name": name, "dtensor": isinstance(p, DTensor),
         "placements": [f"{type(x).__name__}({getattr(x, 'dim', '')})" for x in getattr(p, "placements", ())],
         "local_shape": list((p.to_local() if isinstance(p, DTensor) else p).shape), "shape": list(p.shape)}
        for name, p in model.named_parameters()
    ]


def report_sharding(folder: str) -> None:
    """Record the parameters of what `Accelerator.prepare` returns and of the EMA average, per process."""
    import torch
    from accelerate import Accelerator

    from hf_vit.training import ema

    report = {}
    rank = int(os.environ.get("RANK", "0"))

    def write():
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)

    prepare = Accelerator.prepare

    def prepare_and_report(self, *args, **kwargs):
        result = prepare(self, *args, **kwargs)
        for obj in result if isinstance(result, (tuple, list)) else (result,):  # FSDP2 returns a list
            if isinstance(obj, torch.nn.Module):
                report["model"] = _describe_parameters(obj)
                write()
        return result

    Accelerator.prepare = prepare_and_report
    ema_init = ema.ModelEMA.__init__

    def ema_init_and_report(self, *args, **kwargs):
        ema_init(self, *args, **kwargs)
        report["ema"] = _describe_parameters(self.model)
        write()

    ema.ModelEMA.__init__ = ema_init_and_report


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(f"usage: {sys.argv[0]} ACCELERATE_CONFIG.yaml RECIPE.py [recipe arguments ...]")
    config_file, recipe = sys.argv[1], sys.argv[2]
    os.environ.update(fsdp_environment(config_file))
    take_fsdp_path_on_cpu()
    if os.environ.get("FSDP_CPU_LAUNCH_REPORT"):
        report_sharding(os.environ["FSDP_CPU_LAUNCH_REPORT"])
    sys.argv = [recipe, *sys.argv[3:]]
    runpy.run_path(recipe, run_name="__main__")


if __name__ == "__main__":
    main()
