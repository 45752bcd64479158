"""Supervised training of a ViT from scratch (or from a checkpoint), evaluation, saving, and a pipeline demo.

The paper's pre-training recipe (section 4.1, appendix B.1): Adam (beta 0.9/0.999) with decoupled weight decay 0.1,
linear warm-up then linear decay, gradient clipping at norm 1, the tanh pre-logits head.

    python recipes/pretrain.py recipes/configs/digits.yaml [--field value ...]
"""

import os
import sys

from hf_vit.training import (
    ClassificationTask,
    DataArguments,
    ImageClassificationCollator,
    ModelArguments,
    TrainArguments,
    load_image_classification_data,
    parse_recipe_args,
    train,
)
from hf_vit.training.run import build_model, build_processor, classify_with_pipeline, save_run
from hf_vit.training.transforms import resolve_augmentation


def main(argv=None):
    model_args, data_args, train_args = parse_recipe_args((ModelArguments, DataArguments, TrainArguments), argv)
    data = load_image_classification_data(data_args)
    model = build_model(model_args, data.label_names)
    processor = build_processor(model_args, model)
    augmentation = resolve_augmentation(data_args.augmentation, data.name)
    print(
        f"data: {data.name} ({len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test), "
        f"augmentation: {augmentation}; model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"at {model.config.image_size}px, patch {model.config.patch_size}"
    )

    task = ClassificationTask(model, label_smoothing=train_args.label_smoothing)
    result = train(
        task,
        data.train,
        ImageClassificationCollator(processor, augmentation, generator_seed=train_args.seed),
        train_args,
        eval_dataset=data.validation,
        collate_eval=ImageClassificationCollator(processor),
    )

    # Held-out evaluation on the fixed test split, with the same loop machinery.
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    accelerator = Accelerator(mixed_precision=train_args.mixed_precision)
    test_loader = accelerator.prepare(DataLoader(data.test, batch_size=256, collate_fn=ImageClassificationCollator(processor)))
    test_metrics = task.evaluate(test_loader, accelerator)
    print(f"held-out test accuracy: {test_metrics['accuracy']:.4f} on {test_metrics['num_examples']} images "
          f"(top-5 {test_metrics['top5_accuracy']:.4f}); trained {result.global_step} steps in "
          f"{result.train_seconds:.0f}s ({result.images_per_second:.0f} images/s)")

    if accelerator.is_main_process:
        model = accelerator.unwrap_model(task.model)
        results = {"test": test_metrics, "validation": result.last_eval, "train_seconds": result.train_seconds,
                   "global_step": result.global_step, "dataset": data.name}
        save_run(train_args.output_dir, model, processor, results, model_args, data_args, train_args)
        print(f"saved model and processor to {train_args.output_dir}")
        if train_args.predict_examples > 0:
            examples = data.test.select(range(min(train_args.predict_examples, len(data.test))))
            predictions = classify_with_pipeline(train_args.output_dir, examples["image"])
            for i, (prediction, label) in enumerate(zip(predictions, examples["label"])):
                print(f"pipeline: held-out image {i}: predicted {prediction[0]['label']!r} "
                      f"(score {prediction[0]['score']:.3f}), true {data.label_names[label]!r}")
    return test_metrics


if __name__ == "__main__":
    main()
    sys.exit(0)
