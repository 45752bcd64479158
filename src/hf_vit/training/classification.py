"""Supervised image classification, shared by `recipes/pretrain.py` and `recipes/finetune.py` (ViT paper, section 4.1
and appendix B.1: pre-training and fine-tuning are the same run with other arguments).

On top of the shared run (`hf_vit.training.run`): a classification head for the data set's labels, the held-out test
metrics (with the one-view figure beside a test-time-augmented one, and the EMA model's), a few held-out images
classified through `pipeline()` from the saved folder, and optional publishing to the Hub.
"""

from transformers import pipeline

from ..data import build_eval_loader
from ..hub.options import PublishOptions
from ..hub.publish import HubPublishError, check_can_publish, publish_run
from ..modeling_hf_vit import ViTForImageClassification
from .models import build_model, label_fields
from .run import Recipe, run_recipe
from .tasks import ClassificationTask


class ClassificationRecipe(Recipe):
    objective = "image_classification"
    model_class = ViTForImageClassification

    def check(self) -> None:
        if self.train_args.push_to_hub:  # a run that is to be published must not find out hours later that it cannot
            check_can_publish(self.train_args.push_to_hub, revision=self.train_args.hub_revision,
                              create_pr=self.train_args.hub_create_pr)

    def build_model(self, data):
        new_head = bool(self.model_args.model_name_or_path)
        return build_model(self.model_args, self.model_class, label_fields(data.label_names), new_head=new_head)

    def build_task(self, run):
        args = self.train_args
        if args.test_time_augmentation == "flip" and run.data.kind == "digits":
            raise ValueError("`test_time_augmentation` 'flip' mirrors the evaluation images, and a mirrored digit is "
                             "another digit or none; use 'none' for the digits data set.")
        return ClassificationTask(
            run.model, run.processor, run.augmentation, label_smoothing=args.label_smoothing,
            mixup_alpha=self.data_args.mixup_alpha, cutmix_alpha=self.data_args.cutmix_alpha,
            test_time_augmentation=args.test_time_augmentation,
        )

    def final_metrics(self, run, result) -> dict:
        data, task, accelerator = run.data, run.task, run.accelerator
        if data.test is None:
            return {}
        loader = accelerator.prepare(build_eval_loader(data.test, task.eval_collator(), self.train_args.eval_batch_size,
                                                       pin_memory=self.data_args.pin_memory))
        test, one_view = task.measure(loader, accelerator, with_single_view=True, with_confusion_matrix=True)
        results = {"test": test}
        line = f"held-out test accuracy: {results['test']['accuracy']:.4f} on {results['test']['num_examples']} images"
        if task.test_time_augmentation != "none":  # the one-view figure beside it, as the paper evaluates
            results["test_single_view"] = one_view
            line += (f" with {task.test_time_augmentation} test-time augmentation (one view: "
                     f"{results['test_single_view']['accuracy']:.4f})")
        line += f" (top-5 {results['test']['top5_accuracy']:.4f})"
        if result.ema is not None:
            results["ema_test"] = task.measure(loader, accelerator, result.ema.model)
            line += f"; EMA {results['ema_test']['accuracy']:.4f}"
        accelerator.print(f"{line}; trained {result.global_step} steps in {result.train_seconds:.0f}s "
                          f"({result.images_per_second:.0f} images/s)")
        return results

    def after_save(self, run, results) -> None:
        """Reload the saved folder through `pipeline("image-classification")`, the way users will, and classify."""
        data, count = run.data, self.train_args.predict_examples
        if count <= 0 or data.test is None or data.streaming:
            return
        examples = data.test.select(range(min(count, len(data.test))))
        classifier = pipeline("image-classification", model=self.train_args.output_dir, device="cpu")
        for i, (prediction, label) in enumerate(zip(classifier(list(examples["image"]), top_k=1), examples["label"])):
            print(f"pipeline: held-out image {i}: predicted {prediction[0]['label']!r} "
                  f"(score {prediction[0]['score']:.3f}), true {data.label_names[label]!r}")

    def publish(self, run):
        """Publish the saved run folder; a failure is returned (raised once the run is closed), the folder is kept."""
        args = self.train_args
        if not args.push_to_hub:
            return None
        try:
            publish_run(args.output_dir, args.push_to_hub, **vars(PublishOptions.from_prefixed(args, "hub_")))
        except (HubPublishError, ValueError, OSError) as error:
            print(f"push_to_hub failed; the run folder {args.output_dir} is complete and unchanged, publish it "
                  f"later with `python recipes/push_to_hub.py --run_dir {args.output_dir} "
                  f"--repo_id {args.push_to_hub}`.")
            return error
        return None

    def return_value(self, results, result):
        return results.get("test", {})


def run_image_classification(model_args, data_args, train_args) -> dict:
    """Train, evaluate and save one run; returns the held-out test metrics (also written to eval_results.json)."""
    return run_recipe(ClassificationRecipe(model_args, data_args, train_args))


__all__ = ["ClassificationRecipe", "run_image_classification"]
