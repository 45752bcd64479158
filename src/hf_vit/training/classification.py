"""One supervised image-classification run, shared by `recipes/pretrain.py` and `recipes/finetune.py`
(ViT paper, section 4.1 and appendix B.1: pre-training and fine-tuning are the same loop with other arguments).

data -> model and processor -> task (+ few-shot evaluator) -> the shared loop -> held-out test metrics (and the EMA
model's) -> the run folder -> a few held-out images classified through `pipeline()`.
"""

import time

from accelerate.utils import set_seed

from .arguments import resolved_args_dict
from .data import load_image_classification_data, training_rows
from .loader import build_eval_loader
from .loop import make_accelerator, train
from .run import build_model, build_processor, classify_with_pipeline, describe_hardware, save_run
from .tasks import ClassificationTask
from .transforms import BatchAugmentation, resolve_augmentation


def run_image_classification(model_args, data_args, train_args) -> dict:
    """Train, evaluate and save one run; returns the held-out test metrics (also written to eval_results.json)."""
    started = time.perf_counter()
    if train_args.push_to_hub:  # before any work: a run that is to be published must not find out hours later
        _check_hub_arguments(train_args)
    accelerator = make_accelerator(train_args)
    set_seed(train_args.seed)  # the model's initialisation depends on it
    data = load_image_classification_data(data_args)
    model = build_model(model_args, data.label_names)
    processor = build_processor(model_args, model)
    augmentation_name = resolve_augmentation(data_args.augmentation, data.kind)
    augmentation = None
    if augmentation_name != "none" or data_args.randaugment_num_ops:
        augmentation = BatchAugmentation(
            augmentation_name, processor.image_mean, processor.image_std,
            data_args.randaugment_num_ops, data_args.randaugment_magnitude, data_args.augment_max_shift,
        )
    sizes = "streaming" if data.streaming else (
        f"{len(data.train)} train / {len(data.validation) if data.validation is not None else 0} validation / "
        f"{len(data.test) if data.test is not None else 0} test"
    )
    accelerator.print(
        f"data: {data.name} ({sizes}), augmentation: {augmentation_name}"
        f"{f' + RandAugment({data_args.randaugment_num_ops}, {data_args.randaugment_magnitude})' if data_args.randaugment_num_ops else ''}; "
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters at {model.config.image_size}px, "
        f"patch {model.config.patch_size}; {accelerator.num_processes} process(es)"
    )

    if train_args.test_time_augmentation == "flip" and data.kind == "digits":
        raise ValueError("`test_time_augmentation` 'flip' mirrors the evaluation images, and a mirrored digit is "
                         "another digit or none; use 'none' for the digits data set.")
    task = ClassificationTask(
        model, processor, augmentation, label_smoothing=train_args.label_smoothing,
        mixup_alpha=data_args.mixup_alpha, cutmix_alpha=data_args.cutmix_alpha,
        test_time_augmentation=train_args.test_time_augmentation,
    )
    evaluators = []
    if train_args.fewshot_every_steps >= 0 and not data.streaming:
        from ..evaluation.fewshot import FewShotEvaluator

        fewshot_test = data.validation if data.validation is not None else data.test
        evaluators.append(FewShotEvaluator(data.train, fewshot_test, task.eval_collator(),
                                           shots=train_args.fewshot_shots, seed=train_args.seed))
    run_args = resolved_args_dict(model_args, data_args, train_args)
    train_data = training_rows(data, data_args, processor)
    if data_args.cache_decoded_images:
        accelerator.print(f"decoded {len(train_data)} training images into memory "
                          f"({train_data.nbytes / 2**20:.0f} MiB)")
    result = train(
        task, train_data, train_args, eval_dataset=data.validation, accelerator=accelerator, evaluators=evaluators,
        num_workers=data_args.num_workers, shuffle_buffer_size=data_args.shuffle_buffer_size, run_args=run_args,
    )

    results = {
        "dataset": data.name, "global_step": result.global_step, "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second, "validation": result.last_eval,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(task.model).parameters()),
        "skipped_images": len(data.skipped_images), "hardware": describe_hardware(accelerator),
    }
    test_metrics = {}
    if data.test is not None:
        test_loader = accelerator.prepare(build_eval_loader(data.test, task.eval_collator(), train_args.eval_batch_size))
        logits, labels, one_view = task.predict(test_loader, accelerator, with_single_view=True)
        from ..evaluation.metrics import classification_metrics

        test_metrics = classification_metrics(logits, labels, with_confusion_matrix=True)
        results["test"] = test_metrics
        single_view = ""
        if task.test_time_augmentation != "none":  # the one-view figure beside it, as the paper evaluates
            results["test_single_view"] = classification_metrics(one_view, labels)
            single_view = (f" with {task.test_time_augmentation} test-time augmentation (one view: "
                           f"{results['test_single_view']['accuracy']:.4f})")
        if result.ema is not None:
            results["ema_test"] = classification_metrics(*task.predict(test_loader, accelerator, result.ema.model))
        accelerator.print(
            f"held-out test accuracy: {test_metrics['accuracy']:.4f} on {test_metrics['num_examples']} images"
            f"{single_view} (top-5 {test_metrics['top5_accuracy']:.4f})"
            + (f"; EMA {results['ema_test']['accuracy']:.4f}" if "ema_test" in results else "")
            + f"; trained {result.global_step} steps in {result.train_seconds:.0f}s "
            f"({result.images_per_second:.0f} images/s)"
        )
    results["total_seconds"] = time.perf_counter() - started

    if accelerator.is_main_process:
        model = accelerator.unwrap_model(task.model)
        save_run(train_args.output_dir, model, processor, results, model_args, data_args, train_args,
                 ema_model=result.ema.model if result.ema is not None else None)
        print(f"saved model and processor to {train_args.output_dir}")
        if train_args.predict_examples > 0 and data.test is not None and not data.streaming:
            examples = data.test.select(range(min(train_args.predict_examples, len(data.test))))
            predictions = classify_with_pipeline(train_args.output_dir, examples["image"])
            for i, (prediction, label) in enumerate(zip(predictions, examples["label"])):
                print(f"pipeline: held-out image {i}: predicted {prediction[0]['label']!r} "
                      f"(score {prediction[0]['score']:.3f}), true {data.label_names[label]!r}")
    publish_error = None
    if accelerator.is_main_process and train_args.push_to_hub:
        publish_error = _publish(train_args)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if publish_error is not None:
        raise publish_error
    return test_metrics


def _check_hub_arguments(train_args) -> None:
    from . import hub

    hub.check_can_publish(train_args.push_to_hub, revision=train_args.hub_revision,
                          create_pr=train_args.hub_create_pr)


def _publish(train_args):
    """Publish the saved run folder; a failure is returned (raised after the run is closed), the folder is kept."""
    from . import hub

    try:
        hub.publish_run(train_args.output_dir, train_args.push_to_hub, private=train_args.hub_private_repo,
                        revision=train_args.hub_revision, create_pr=train_args.hub_create_pr,
                        commit_message=train_args.hub_commit_message, card_data=train_args.hub_card_data)
    except (hub.HubPublishError, ValueError, OSError) as error:
        print(f"push_to_hub failed; the run folder {train_args.output_dir} is complete and unchanged, publish it "
              f"later with `python recipes/push_to_hub.py --run_dir {train_args.output_dir} "
              f"--repo_id {train_args.push_to_hub}`.")
        return error
    return None
