"""One run skeleton for every recipe (ViT paper, section 4.1 and appendix B: pre-training, fine-tuning and the
masked-patch self-supervision are the same loop with other tasks and arguments).

    accelerator and seed -> data -> model and processor -> augmentation -> task (+ few-shot evaluators)
      -> the shared loop -> the recipe's final evaluation -> the run folder (hf_vit.run_folder) -> the recipe's
      finishing touches (a demo, a figure, publishing) -> teardown

What differs between recipes is a `Recipe` subclass: which model class, which task, how the final metrics are taken
and what happens after saving. `run_recipe` does everything else, the same way for all of them.
"""

import os
import platform
import time
from dataclasses import dataclass

import torch
from accelerate.utils import set_seed

from ..data import (
    BatchAugmentation,
    ImageClassificationCollator,
    load_image_classification_data,
    resolve_augmentation,
    training_rows,
)
from ..evaluation.fewshot import FewShotEvaluator, root_parameters_gathered
from ..run_folder import save_run
from .arguments import resolved_args_dict
from .checkpoint import claim_output_dir
from .loop import make_accelerator, parameters_are_sharded, train
from .models import build_model, build_processor


@dataclass
class RunContext:
    """What a recipe's hooks see of the run being made."""

    accelerator: object
    data: object  # hf_vit.data.ImageClassificationData
    model: object
    processor: object
    augmentation_name: str
    augmentation: BatchAugmentation | None
    task: object = None
    # The model as written to the run folder (its whole weights; for `after_save`, on the main process). Under FSDP
    # the trained model holds shards only, and a forward pass of it on one process would wait for the others.
    saved_model: object = None


class Recipe:
    """
    The hooks of one kind of run; `run_recipe` calls them in order. `args` are the recipe's argument dataclasses,
    model, data and train arguments first (all of them are written to run_args.json).
    """

    objective = "image_classification"
    model_class = None

    def __init__(self, model_args, data_args, train_args, *extra_args):
        self.model_args, self.data_args, self.train_args = model_args, data_args, train_args
        self.extra_args = extra_args

    @property
    def args(self) -> tuple:
        return (self.model_args, self.data_args, self.train_args, *self.extra_args)

    def check(self) -> None:
        """Refuse what cannot work, before any work is done."""

    def build_model(self, data):
        return build_model(self.model_args, self.model_class)

    def build_augmentation(self, data, processor) -> tuple[str, BatchAugmentation | None]:
        name = resolve_augmentation(self.data_args.augmentation, data.kind)
        num_ops = self.data_args.randaugment_num_ops
        if name == "none" and not num_ops:
            return name, None
        data_args = self.data_args
        return name, BatchAugmentation(
            name, processor.image_mean, processor.image_std, num_ops, data_args.randaugment_magnitude,
            data_args.augment_max_shift, data_args.crop_scale, data_args.crop_ratio, data_args.reduced_jpeg_decoding,
        )

    def describe(self, run: RunContext) -> str:
        """The run's first line: data, augmentation, model."""
        data, config = run.data, run.model.config
        sizes = "streaming" if data.streaming else (
            f"{len(data.train)} train / {len(data.validation) if data.validation is not None else 0} validation / "
            f"{len(data.test) if data.test is not None else 0} test"
        )
        augmentation = run.augmentation_name
        if self.data_args.randaugment_num_ops:
            augmentation += f" + RandAugment({self.data_args.randaugment_num_ops}, {self.data_args.randaugment_magnitude})"
        return (f"{self.objective.replace('_', ' ')}: {data.name} ({sizes}), augmentation {augmentation}; "
                f"model {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters at "
                f"{config.image_size}px, patch {config.patch_size}; {run.accelerator.num_processes} process(es)")

    def build_task(self, run: RunContext):
        raise NotImplementedError

    def fewshot_representation(self, model):
        """The module few-shot evaluation reads features from (its pooled output)."""
        return model

    def final_metrics(self, run: RunContext, result) -> dict:
        """Metrics after training (every process takes part), merged into eval_results.json."""
        return {}

    def after_save(self, run: RunContext, results: dict) -> None:
        """On the main process, after the run folder is written."""

    def publish(self, run: RunContext):
        """On the main process, last: an exception to raise once the run is closed, or None."""
        return None

    def return_value(self, results: dict, result):
        return results


def run_recipe(recipe: Recipe):
    """Make one run of `recipe` (see the module docstring); returns `recipe.return_value(...)`."""
    started = time.perf_counter()
    recipe.check()
    train_args, data_args = recipe.train_args, recipe.data_args
    # Refuse an output_dir holding another run now, before any data is loaded (the loop claims it for real).
    claim_output_dir(train_args.output_dir, train_args.resume, train_args.overwrite_output_dir, is_main_process=False)
    accelerator = make_accelerator(train_args)
    set_seed(train_args.seed)  # the model's initialisation depends on it
    data = load_image_classification_data(data_args)
    model = recipe.build_model(data)
    processor = build_processor(recipe.model_args, model)
    # The processor's normalisation goes into the config, so the saved model can recover the image from its input
    # (masked patch prediction's targets with `bool_masked_pos`).
    model.config.record_image_normalization(processor)
    augmentation_name, augmentation = recipe.build_augmentation(data, processor)
    run = RunContext(accelerator, data, model, processor, augmentation_name, augmentation)
    accelerator.print(recipe.describe(run))
    run.task = task = recipe.build_task(run)

    evaluators = []
    if train_args.fewshot_every_steps >= 0 and not data.streaming:
        fewshot_test = data.validation if data.validation is not None else data.test
        evaluator = FewShotEvaluator(data.train, fewshot_test, ImageClassificationCollator(processor),
                                     shots=train_args.fewshot_shots, seed=train_args.seed)

        def fewshot(model, accelerator=None):
            with root_parameters_gathered(model):  # FSDP2: the features are read from inside the sharded model
                return evaluator(recipe.fewshot_representation(model), accelerator)

        evaluators.append(fewshot)
    run_args = resolved_args_dict(*recipe.args)
    train_data = training_rows(data, data_args, processor)
    if data_args.cache_decoded_images:
        accelerator.print(f"decoded {len(train_data)} training images into memory "
                          f"({train_data.nbytes / 2**20:.0f} MiB)")
    result = train(
        task, train_data, train_args, eval_dataset=data.validation, accelerator=accelerator, evaluators=evaluators,
        num_workers=data_args.num_workers, shuffle_buffer_size=data_args.shuffle_buffer_size, run_args=run_args,
        pin_memory=data_args.pin_memory,
    )
    results = {
        "dataset": data.name, "objective": recipe.objective, "global_step": result.global_step,
        "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
        "validation": result.last_eval,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(task.model).parameters()),
        "skipped_images": len(data.skipped_images), "hardware": describe_hardware(accelerator),
        "mixed_precision": accelerator.mixed_precision,  # what ran: `mixed_precision: auto` resolved, or the launcher's
    }
    if result.best is not None:
        results["best_checkpoint"] = {**result.best,
                                      "checkpoint": os.path.relpath(result.best["checkpoint"], train_args.output_dir)}
    results.update(recipe.final_metrics(run, result))
    results["total_seconds"] = time.perf_counter() - started

    # Sharded parameters (FSDP, ZeRO-3): every process takes part in gathering the whole weights, the main process
    # writes them; the run folder is the same ordinary hf_vit folder as after a DDP or one-process run.
    model = accelerator.unwrap_model(task.model)
    ema_model = result.ema.model if result.ema is not None else None
    if parameters_are_sharded(accelerator):
        model = whole_model(model, accelerator.get_state_dict(task.model), accelerator.is_main_process)
    if result.ema is not None and result.ema.sharded:
        ema_model = whole_model(ema_model, result.ema.full_state_dict(), accelerator.is_main_process)
    publish_error = None
    if accelerator.is_main_process:
        save_run(train_args.output_dir, model, processor, results, run_args, ema_model=ema_model)
        run.saved_model = model
        print(f"saved model and processor to {train_args.output_dir}")
        recipe.after_save(run, results)
        publish_error = recipe.publish(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if publish_error is not None:
        raise publish_error
    return recipe.return_value(results, result)


def whole_model(model, state_dict: dict, is_main_process: bool = True):
    """
    A model of `model`'s own class holding the whole weights `state_dict` (gathered from a sharded model), to be
    saved like any model; None on the other processes, which got no weights. FSDP2 changes a sharded model's class
    into a subclass (`FSDPViTForImageClassification`, defined in torch), and `save_pretrained` would copy torch's
    files as the folder's remote code instead of hf_vit's: the copy has the original class.
    """
    if not is_main_process:
        return None
    from torch.distributed.fsdp import FSDPModule

    model_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    with torch.device("meta"):  # no memory for weights that are replaced right away
        whole = model_class(model.config)
    whole.load_state_dict(state_dict, strict=True, assign=True)
    sources = dict(model.named_buffers())
    for name, buffer in list(whole.named_buffers()):
        if buffer.is_meta:  # a non-persistent buffer is not in a state dict; FSDP does not shard buffers
            module, _, leaf = name.rpartition(".")
            whole.get_submodule(module)._buffers[leaf] = sources[name].detach().cpu().clone()
    return whole.eval()


def describe_hardware(accelerator) -> str:
    """One line for the run's results and its model card: processes, device, CPU threads, torch version."""
    processes = accelerator.num_processes
    device = accelerator.device
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} GPU"
    else:
        threads = torch.get_num_threads()
        where = (f"CPU ({cpu_model()}), {os.cpu_count()} cores visible, {threads} torch "
                 f"thread{'s' if threads > 1 else ''} per process")
    return (f"{processes} process{'es' if processes > 1 else ''} on {where}; torch {torch.__version__}, "
            f"mixed precision {accelerator.mixed_precision}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows (bench/ reports it too)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


__all__ = ["Recipe", "RunContext", "cpu_model", "describe_hardware", "run_recipe", "whole_model"]
