"""Evaluation: metrics through the shipped `evaluate` modules (offline), few-shot linear evaluation, `hf-vit evaluate`."""

import json

import numpy as np
import pytest
import torch

from hf_vit import ViTImageProcessor
from hf_vit.evaluation.fewshot import FewShotEvaluator, fewshot_linear_accuracy, ridge_fit, ridge_predict
from hf_vit.evaluation.metrics import classification_metrics, confusion_matrix, load_metric, top_k_accuracy
from hf_vit.data import DataArguments, ImageClassificationCollator, load_image_classification_data


def test_metric_modules_load_offline_through_evaluate():
    import evaluate

    metric = load_metric("top_k_accuracy")
    assert isinstance(metric, evaluate.Metric)
    scores = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]
    result = metric.compute(predictions=scores, references=[1, 1, 0, 2], k=[1, 2, 3])
    assert result == {"top1_accuracy": 0.25, "top2_accuracy": 0.5, "top3_accuracy": 1.0}
    ties = metric.compute(predictions=[[0.0, 0.0, 0.0]] * 3, references=[0, 1, 2], k=[1, 2])
    assert ties == {"top1_accuracy": pytest.approx(1 / 3), "top2_accuracy": pytest.approx(2 / 3)}  # as argmax / topk
    with pytest.raises(ValueError, match="unknown|Unknown"):
        load_metric("bleu")


def test_top5_and_loss_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=generator)
    labels = torch.randint(0, 20, (500,), generator=generator)
    metrics = classification_metrics(logits, labels, with_confusion_matrix=True)
    top5 = (logits.topk(5, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    assert metrics["top5_accuracy"] == pytest.approx(top5)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (20, 20) and matrix.sum() == 500 and np.trace(matrix) == round(metrics["accuracy"] * 500)
    assert top_k_accuracy(logits, labels, k=5) == pytest.approx(top5)


def test_streaming_metrics_are_the_evaluate_modules_results_on_the_same_logits():
    """The counts made batch by batch (the recipes, hf-vit evaluate) against the shipped `evaluate` modules, which
    see every logit at once; ties (quantised logits) broken the same way."""
    from hf_vit.evaluation import CONFUSION_MATRIX_MAX_CLASSES, StreamingAccuracy, StreamingClassificationMetrics

    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(1037, 13, generator=generator) * 2).round()  # many ties
    labels = torch.randint(0, 13, (1037,), generator=generator)
    streamed = StreamingClassificationMetrics(13, with_confusion_matrix=True)
    for start in range(0, 1037, 100):  # uneven batches
        streamed.update(**streamed.per_example(logits[start : start + 100], labels[start : start + 100]))
    result = streamed.compute()
    modules = load_metric("top_k_accuracy").compute(predictions=logits.numpy(), references=labels.numpy(), k=[1, 5])
    assert result["accuracy"] == modules["top1_accuracy"] and result["top5_accuracy"] == modules["top5_accuracy"]
    assert result["confusion_matrix"] == confusion_matrix(logits.argmax(-1), labels, num_labels=13)
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert result["num_examples"] == 1037 and classification_metrics(logits, labels, True, chunk_size=64) == result
    # Beyond the limit the quadratic matrix is not kept at all.
    wide = StreamingClassificationMetrics(CONFUSION_MATRIX_MAX_CLASSES + 1, with_confusion_matrix=True)
    assert wide.confusion is None
    wide.update(**wide.per_example(torch.randn(4, CONFUSION_MATRIX_MAX_CLASSES + 1), torch.tensor([0, 1, 2, 3])))
    assert "confusion_matrix" not in wide.compute()
    # Trainer's batch_eval_metrics: one batch per call, the result on the last.
    from transformers import EvalPrediction

    trainer_metrics = StreamingAccuracy()
    for start in range(0, 1037, 500):
        batch = EvalPrediction(predictions=logits[start : start + 500].numpy(), label_ids=labels[start : start + 500].numpy())
        out = trainer_metrics(batch, compute_result=start + 500 >= 1037)
    assert out == {"accuracy": result["accuracy"], "top5_accuracy": result["top5_accuracy"]}


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix([0, 1, 1, 2], [0, 1, 0, 0], num_labels=3) == [[1, 1, 1], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix([0, 3], [0, 1], num_labels=2)


# ---------------------------------------------------------------------------------------------------------------------
# Few-shot linear evaluation


def test_ridge_is_sklearns_ridge_in_both_forms():
    from sklearn.linear_model import Ridge

    generator = torch.Generator().manual_seed(0)
    for n, d in ((50, 8), (6, 40)):  # primal (N >= D) and dual (N < D) solutions
        x = torch.randn(n, d, generator=generator)
        y = torch.randn(n, 3, generator=generator)
        weights, bias = ridge_fit(x, y, l2=0.7)
        reference = Ridge(alpha=0.7, fit_intercept=True).fit(x.numpy().astype(np.float64), y.numpy().astype(np.float64))
        assert np.allclose(weights.numpy(), reference.coef_.T, atol=1e-8)
        assert np.allclose(bias.numpy(), reference.intercept_, atol=1e-8)


def _clustered(num_classes, per_class, dim, spread, generator):
    centres = torch.randn(num_classes, dim, generator=generator) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_fewshot_separates_clusters_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = _clustered(5, 40, 16, 0.5, generator)
    test_x, test_y = _clustered(5, 20, 16, 0.5, torch.Generator().manual_seed(0))
    results = fewshot_linear_accuracy(train_x, train_y, test_x, test_y, shots=(1, 5, 10, 25))
    assert [r.shots for r in results] == [1, 5, 10, 25]
    assert all(r.accuracy == 1.0 for r in results[1:])  # tight clusters: 5 shots per class suffice
    noise = fewshot_linear_accuracy(torch.randn(200, 16, generator=generator), train_y,
                                    torch.randn(100, 16, generator=generator), test_y, shots=(5,))
    assert noise[0].accuracy < 0.45  # chance is 0.2
    with pytest.raises(ValueError, match="needs 35 training images"):
        fewshot_linear_accuracy(train_x[:100], train_y[:100], test_x, test_y, shots=(25,))


def test_fewshot_regulariser_is_chosen_on_held_out_training_images():
    generator = torch.Generator().manual_seed(1)
    # Two informative dimensions drowned in 200 noisy ones: with 5 shots a small l2 overfits the noise.
    train_y = torch.arange(2).repeat_interleave(60)
    train_x = torch.randn(120, 202, generator=generator)
    train_x[:, :2] += torch.nn.functional.one_hot(train_y, 2).float() * 4
    test_y = torch.arange(2).repeat_interleave(100)
    test_x = torch.randn(200, 202, generator=generator)
    test_x[:, :2] += torch.nn.functional.one_hot(test_y, 2).float() * 4
    grid = (1e-4, 1e4)
    chosen = fewshot_linear_accuracy(train_x, train_y, test_x, test_y, shots=(5,), l2_grid=grid, holdout_per_class=40)[0]
    for l2 in grid:
        single = fewshot_linear_accuracy(train_x, train_y, test_x, test_y, shots=(5,), l2_grid=(l2,), holdout_per_class=40)[0]
        assert chosen.holdout_accuracy >= single.holdout_accuracy
    assert chosen.l2 in grid
    weights, bias = ridge_fit(train_x[:4], torch.tensor([[1.0, -1.0], [-1, 1], [1, -1], [-1, 1]]), 1.0)
    assert ridge_predict(train_x[:4], weights, bias).shape == (4,)


@pytest.fixture(scope="module")
def digits():
    return load_image_classification_data(DataArguments(dataset="digits"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tests.test_training import tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    model = tiny_model(id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def test_fewshot_evaluator_on_a_model(digits, tiny_folder):
    from hf_vit import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(tiny_folder)
    processor = ViTImageProcessor.from_pretrained(tiny_folder)
    evaluator = FewShotEvaluator(digits.train, digits.validation, ImageClassificationCollator(processor), shots=(1, 5))
    assert len(evaluator.train_rows) == 10 * (10 + 5)
    metrics = evaluator(model)
    assert set(metrics) == {"fewshot/1shot_accuracy", "fewshot/1shot_l2", "fewshot/5shot_accuracy", "fewshot/5shot_l2"}
    # Even an untrained ViT's random features are far better than chance on digits with 5 shots.
    assert metrics["fewshot/5shot_accuracy"] > 0.3
    assert evaluator(model) == metrics  # fixed draws: repeatable across evaluations


# ---------------------------------------------------------------------------------------------------------------------
# hf-vit evaluate


def _cli(capsys, *args):
    from hf_vit.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_cli_reports_accuracy_and_fewshot(tiny_folder, digits, capsys):
    code, out, err = _cli(capsys, "evaluate", str(tiny_folder), "--dataset", "digits", "--fewshot", "--shots", "1", "5", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["num_examples"] == 360 and report["dataset"] == "digits"
    assert report["test"]["accuracy"] == pytest.approx(0.1, abs=0.02)  # zero-initialised head: the first class
    assert np.array(report["test"]["confusion_matrix"]).sum() == 360
    assert {"fewshot/1shot_accuracy", "fewshot/5shot_accuracy"} <= set(report["fewshot"])
    code, out, _ = _cli(capsys, "evaluate", str(tiny_folder), "--dataset", "digits", "--max-examples", "50")
    assert code == 0 and "top-1 accuracy" in out and "confusion matrix" in out


def test_evaluate_cli_refuses_a_head_for_other_classes(tmp_path, tiny_folder, capsys):
    from tests.test_data import make_image_folder

    photos = make_image_folder(tmp_path / "photos")
    code, _, err = _cli(capsys, "evaluate", str(tiny_folder), "--dataset", str(photos))
    assert code == 2 and "10 output classes" in err and "--fewshot-only" in err
    code, _, err = _cli(capsys, "evaluate", str(tiny_folder), "--dataset", str(photos), "--fewshot-only", "--shots", "1")
    assert code == 2 and "needs 11 training images of every class" in err  # 6 per class after the test split
    code, out, _ = _cli(capsys, "evaluate", str(tiny_folder), "--dataset", str(photos), "--fewshot-only", "--shots", "1",
                        "--holdout-per-class", "2", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and "test" not in report and 0.0 <= report["fewshot"]["fewshot/1shot_accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Test-time augmentation


def test_flip_tta_averages_the_views_probabilities_and_is_mirror_symmetric():
    from hf_vit.evaluation.tta import classify
    from tests.test_training import tiny_model

    torch.manual_seed(0)
    model = tiny_model().eval()
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # the zero-initialised head would score every class alike
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        plain, mirrored = model(pixel_values=images).logits, model(pixel_values=images.flip(-1)).logits
        assert not torch.allclose(plain, mirrored, atol=1e-3)  # the model itself is not mirror symmetric
        assert torch.equal(classify(model, images), plain.float())
        scores = classify(model, images, "flip")
        expected = ((plain.softmax(-1) + mirrored.softmax(-1)) / 2).log()
        torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-6)
        assert torch.allclose(scores.exp().sum(-1), torch.ones(4))  # log-probabilities, read like logits
        # An image and its mirror image get the same flip-averaged scores.
        torch.testing.assert_close(classify(model, images.flip(-1), "flip"), scores, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"`test_time_augmentation` must be one of \['none', 'flip'\], got 'crop'"):
        classify(model, images, "crop")


def test_evaluate_cli_with_flip_tta(tiny_folder, capsys):
    from hf_vit import ViTForImageClassification
    from hf_vit.evaluation.tta import classify

    model = ViTForImageClassification.from_pretrained(tiny_folder)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    folder = tiny_folder.parent / "tiny-model-random-head"
    model.save_pretrained(folder)
    ViTImageProcessor.from_pretrained(tiny_folder).save_pretrained(folder)
    reports = {}
    for views in ("none", "flip"):
        code, out, err = _cli(capsys, "evaluate", str(folder), "--dataset", "digits", "--max-examples", "100",
                              "--tta", views, "--json")
        assert code == 0, err
        reports[views] = json.loads(out.strip().splitlines()[-1])
        assert reports[views]["test_time_augmentation"] == views
    # The CLI's figures are the direct computation's, and the two evaluations differ.
    data = load_image_classification_data(DataArguments(dataset="digits", validation_fraction=0.0, max_eval_examples=100))
    batch = ImageClassificationCollator(ViTImageProcessor.from_pretrained(folder))(list(data.test))
    with torch.no_grad():
        for views, report in reports.items():
            expected = classification_metrics(classify(model.eval(), batch["pixel_values"], views), batch["labels"])
            assert report["test"]["accuracy"] == pytest.approx(expected["accuracy"])
            assert report["test"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert reports["none"]["test"]["loss"] != pytest.approx(reports["flip"]["test"]["loss"], rel=1e-4)
    code, out, _ = _cli(capsys, "evaluate", str(folder), "--dataset", "digits", "--max-examples", "20", "--tta", "flip")
    assert code == 0 and "(flip test-time augmentation)" in out


# ---------------------------------------------------------------------------------------------------------------------
# --dtype


@pytest.fixture(scope="module")
def ridge_head_folder(tmp_path_factory, digits):
    """A tiny random-feature ViT whose head is a closed-form ridge fit on the digits training set: well above chance,
    so that a change of numeric format can move its accuracy (an untrained head predicts one class whatever)."""
    from tests.test_training import tiny_model

    folder = tmp_path_factory.mktemp("ridge-head")
    torch.manual_seed(0)
    model = tiny_model(id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)}).eval()
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    batch = ImageClassificationCollator(processor)(list(digits.train))
    with torch.no_grad():
        features = model.vit(pixel_values=batch["pixel_values"]).pooler_output
    targets = torch.nn.functional.one_hot(batch["labels"], 10).double() * 2 - 1
    weights, bias = ridge_fit(features, targets, 10.0)
    with torch.no_grad():
        model.classifier.weight.copy_(weights.T.float())
        model.classifier.bias.copy_(bias.float())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.02), ("int8", 0.04)])
def test_evaluate_cli_dtypes_match_float32(ridge_head_folder, capsys, dtype, tolerance):
    # Tolerance on the top-1 accuracy over the 360 test digits (55.3% in float32). This random-feature model is an
    # ill-conditioned case (its head leans on small feature differences): bf16 changes 9 of its predictions, in both
    # directions, and leaves the accuracy as it is; int8 changes 18 and costs 1.9 points (a trained model: docs/).
    # The loss moves by 0.2% at most.
    reports = {}
    for name in ("float32", dtype):
        code, out, err = _cli(capsys, "evaluate", str(ridge_head_folder), "--dataset", "digits", "--json",
                              "--dtype", name, "--device", "cpu")
        assert code == 0, err
        reports[name] = json.loads(out.strip().splitlines()[-1])
        assert reports[name]["dtype"] == name and reports[name]["device"] == "cpu"
    want, got = reports["float32"]["test"], reports[dtype]["test"]
    assert want["accuracy"] > 0.4  # far above chance (0.1): a model whose accuracy can move
    assert abs(got["accuracy"] - want["accuracy"]) <= tolerance
    assert got["loss"] != want["loss"] and got["loss"] == pytest.approx(want["loss"], rel=0.01)


def test_evaluate_cli_rejects_a_bad_dtype(tiny_folder, capsys):
    from hf_vit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_folder), "--dataset", "digits", "--dtype", "fp8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp8' (choose from 'float32', 'bfloat16', 'int8')" in capsys.readouterr().err
