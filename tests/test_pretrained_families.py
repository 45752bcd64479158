"""The checkpoints people fine-tune today, loaded into hf_vit and compared with their own code (marker `parity`):
transformers' ViT-MAE, DeiT (plain and with the distillation head), DINOv2 and DINOv2 with registers, built with
random weights (no Hub), saved, loaded with `from_pretrained` and `hf_vit.conversion`, at the checkpoint's resolution
and another one; timm's state dicts of the same families (skipped without timm); the export back to an hf_vit folder
that loads where hf_vit is not installed; and the refusal of every other model_type.

Tolerance 1e-5 (the issue's): both sides compute the same fp32 graph; only the fused q/k/v (and gate/value)
matmuls and the attention kernel differ, which agree to ~1e-7 at tiny size.
"""

import importlib.util
import json
import textwrap

import pytest
import torch
import transformers
from safetensors.torch import save_file

from hf_vit import ViTForImageClassification, ViTModel
from hf_vit.conversion import ConversionError, load_timm, load_transformers
from hf_vit.transformers_vit_format import SUPPORTED_MODEL_TYPES

from .common import run_without_hf_vit


pytestmark = pytest.mark.parity

TOLERANCE = 1e-5
HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (it needs torchvision); see bench/README.md")

TINY_T = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
OTHER_SIZE = (48, 40)  # another resolution than the checkpoint's 32x32, not square
MAE_DECODER = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                   decoder_intermediate_size=32)


def _randomise(model, std=0.3):
    """Every parameter drawn from N(0, std): zero class tokens, heads and unit LayerScales would hide bugs, and
    outputs of order 1 make a wrong gate order or resampling kernel show (at 0.05 they stay below 1e-5)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model.eval()


def _perturb(model, std=0.02):
    """The model's own initialisation plus N(0, std) noise (keeps a 12-layer model's activations in range)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * std)
    return model.eval()


def _labels(n):
    return dict(num_labels=n, id2label={i: f"class_{i}" for i in range(n)}, label2id={f"class_{i}": i for i in range(n)})


# name: (transformers model factory, hf_vit class that reproduces it, the outputs compared)
FAMILIES = {
    "vit_mae-model": (lambda: transformers.ViTMAEModel(transformers.ViTMAEConfig(**TINY_T, intermediate_size=64,
                                                                                mask_ratio=0.0)),
                      ViTModel, ("last_hidden_state",)),
    "vit_mae-pretraining": (lambda: transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
        **TINY_T, intermediate_size=64, mask_ratio=0.0, **MAE_DECODER)), ViTModel, ("last_hidden_state",)),
    "deit-model": (lambda: transformers.DeiTModel(transformers.DeiTConfig(**TINY_T, intermediate_size=64)),
                   ViTModel, ("last_hidden_state", "pooler_output")),
    "deit-classifier": (lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(
        **TINY_T, intermediate_size=64, **_labels(5))), ViTForImageClassification, ("logits",)),
    "deit-with-teacher": (lambda: transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
        **TINY_T, intermediate_size=64, **_labels(5))), ViTForImageClassification,
        ("logits", "cls_logits", "distillation_logits")),
    "dinov2-model": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**TINY_T)),
                     ViTModel, ("last_hidden_state", "pooler_output")),
    "dinov2-classifier": (lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        **TINY_T, **_labels(5))), ViTForImageClassification, ("logits",)),
    "dinov2-swiglu-classifier": (lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        **TINY_T, use_swiglu_ffn=True, **_labels(5))), ViTForImageClassification, ("logits",)),
    "dinov2_with_registers-model": (lambda: transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(**TINY_T, num_register_tokens=3)), ViTModel,
        ("last_hidden_state", "pooler_output")),
    "dinov2_with_registers-classifier": (lambda: transformers.Dinov2WithRegistersForImageClassification(
        transformers.Dinov2WithRegistersConfig(**TINY_T, num_register_tokens=3, **_labels(5))),
        ViTForImageClassification, ("logits",)),
}


def _reference_outputs(model, pixel_values, interpolate: bool) -> dict:
    """transformers' outputs; ViT-MAE with every patch kept in order (mask_ratio 0, increasing noise)."""
    model_type = model.config.model_type
    kwargs = {}
    if model_type != "dinov2" and model_type != "dinov2_with_registers":
        kwargs["interpolate_pos_encoding"] = interpolate  # DINOv2 always resamples when the grid differs
    if model_type == "vit_mae":
        patch = model.config.patch_size
        num_patches = (pixel_values.shape[2] // patch) * (pixel_values.shape[3] // patch)
        kwargs["noise"] = torch.arange(num_patches, dtype=torch.float32).expand(pixel_values.shape[0], -1)
        if isinstance(model, transformers.ViTMAEForPreTraining):
            model = model.vit
    with torch.no_grad():
        out = model(pixel_values, **kwargs)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _save(model, path, names):
    if names == "legacy_4x":
        model.save_pretrained(path)  # what transformers writes (and the Hub holds): the 4.x key names
    else:
        model.config.save_pretrained(path)  # a state dict of the in-memory 5.x names
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    return model


def _max_diff(a, b) -> float:
    return (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max().item()


@pytest.mark.parametrize("names", ["legacy_4x", "current_5x"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_pretrained_reproduces_transformers(family, names, tmp_path):
    make, hf_vit_class, compared = FAMILIES[family]
    reference = _save(_randomise(make()), tmp_path, names)
    model = hf_vit_class.from_pretrained(tmp_path).eval()
    assert model.config.model_type == "hf_vit"
    for size in (None, OTHER_SIZE):
        pixel_values = torch.randn(2, 3, *(size or (32, 32)), generator=torch.Generator().manual_seed(1))
        interpolate = size is not None
        theirs = _reference_outputs(reference, pixel_values, interpolate)
        with torch.no_grad():
            ours = model(pixel_values, interpolate_pos_encoding=interpolate)
        for key in compared:
            assert ours[key].shape == theirs[key].shape, key
            difference = _max_diff(ours[key], theirs[key])
            print(f"{family} ({names}) {key} at {size or 'source size'}: max |hf_vit - transformers| = {difference:.2g}")
            assert difference < TOLERANCE, (key, size, difference)


def test_registers_and_distillation_tokens_are_all_there(tmp_path):
    # The finding: a dinov2_with_registers folder lost its registers (17 tokens instead of 21).
    reference = _randomise(FAMILIES["dinov2_with_registers-model"][0]())
    reference.save_pretrained(tmp_path)
    model = ViTModel.from_pretrained(tmp_path)
    assert model.config.num_register_tokens == 3 and model.config.num_prefix_tokens == 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 1 + 3 + 16, 32)
    torch.testing.assert_close(model.embeddings.register_tokens, reference.embeddings.register_tokens)


def test_mae_classifier_is_maes_fine_tuning_model(tmp_path):
    reference = _randomise(FAMILIES["vit_mae-pretraining"][0]())
    reference.save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path, num_labels=4, ignore_mismatched_sizes=True).eval()
    config = model.config
    assert (config.pooling, config.layer_norm_after_pooling, config.use_class_token) == ("gap", True, True)
    assert config.num_labels == 4 and model.classifier.weight.abs().sum() == 0  # a new zero head
    norm = model.vit.pooler.layernorm  # a fresh LayerNorm of its own; the encoder's final one is not used
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = reference.vit(pixel_values, noise=torch.arange(16.0).expand(2, -1), output_hidden_states=True)
        ours = model.vit(pixel_values, output_hidden_states=True)
    blocks = theirs.hidden_states[-1]  # the encoder's last block, before its final LayerNorm
    assert _max_diff(ours.hidden_states[-1], blocks) < TOLERANCE
    expected = torch.nn.functional.layer_norm(blocks[:, 1:].mean(1), (32,), eps=config.layer_norm_eps)
    assert _max_diff(ours.pooler_output, expected) < TOLERANCE
    # Opting out keeps the encoder's final LayerNorm (then the encoder's tokens are transformers' exactly).
    kept = ViTForImageClassification.from_pretrained(tmp_path, layer_norm_after_pooling=False, pooling="cls").eval()
    with torch.no_grad():
        assert _max_diff(kept.vit(pixel_values).last_hidden_state, theirs.last_hidden_state) < TOLERANCE


@pytest.mark.parametrize("family", ["deit-with-teacher", "dinov2-classifier"])
def test_new_labels_give_new_zero_heads_on_the_same_encoder(family, tmp_path):
    reference = _randomise(FAMILIES[family][0]())
    reference.save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True).eval()
    heads = [model.classifier] + ([model.distillation_classifier] if family.startswith("deit") else [])
    width = 64 if family.startswith("dinov2") else 32  # DINOv2's head reads [class token, patch mean]
    assert heads[0].weight.shape == (7, width)
    for head in heads:
        assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    base = getattr(reference, reference.base_model_prefix)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(model.vit(pixel_values).last_hidden_state, base(pixel_values).last_hidden_state) < TOLERANCE


def test_other_model_types_are_refused_by_name(tmp_path):
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64).save_pretrained(tmp_path)
    for cls in (ViTModel, ViTForImageClassification):
        with pytest.raises(ValueError, match=r"model_type 'bert'.*'hf_vit'.*'vit_mae', 'deit', 'dinov2'"):
            cls.from_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"model_type 'bert'; expected one of"):
        load_transformers(tmp_path)
    assert set(SUPPORTED_MODEL_TYPES) == {"vit", "vit_mae", "deit", "dinov2", "dinov2_with_registers"}


# ---- hf_vit.conversion and `hf-vit convert` ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vit_mae-pretraining", "deit-with-teacher", "dinov2_with_registers-classifier"])
def test_conversion_checks_against_transformers(family, tmp_path):
    reference = _randomise(FAMILIES[family][0]())
    reference.save_pretrained(tmp_path)
    model, report = load_transformers(tmp_path, check=True, output_loading_info=True)
    (name, difference), = report.max_abs_difference.items()
    assert name.startswith("transformers' ") and difference < TOLERANCE
    if family.startswith("vit_mae"):
        assert any(k.startswith("decoder.") for k in report.dropped_keys)
        assert report.new_keys == ["vit.pooler.layernorm.weight", "vit.pooler.layernorm.bias"]
    # At another resolution with a new head: resampled the family's way (bicubic; anti-aliased for registers).
    resized, report = load_transformers(tmp_path, image_size=48, num_labels=3, output_loading_info=True)
    assert resized.config.image_size == 48 and resized.config.num_labels == 3
    assert report.resampled_position_embeddings[2].startswith("bicubic")
    assert ("antialias" in report.resampled_position_embeddings[2]) == family.startswith("dinov2_with_registers")


def test_cli_converts_a_distilled_deit(tmp_path, capsys):
    from hf_vit.cli import main

    reference = _randomise(FAMILIES["deit-with-teacher"][0]())
    reference.save_pretrained(tmp_path / "deit")
    assert main(["convert", str(tmp_path / "deit"), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference vs transformers' DeiTForImageClassificationWithTeacher" in printed
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "hf_vit" and saved["use_distillation_head"] is True
    assert saved["position_embedding_interpolation"] == "bicubic"  # the source's resampling is kept
    model = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(model(pixel_values).logits, reference(pixel_values).logits) < TOLERANCE


# ---- export: an ordinary hf_vit folder that loads without hf_vit ---------------------------------------------------

_REMOTE_SCRIPT = textwrap.dedent(
    """
    import torch, transformers

    pixel_values = torch.load(sys.argv[1])
    report = {}
    for folder in sys.argv[2:]:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        classifier = config.architectures == ["ViTForImageClassification"]
        auto = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(pixel_values, interpolate_pos_encoding=True)
        main = out.logits if classifier else out.last_hidden_state
        report[folder] = {"module": type(model).__module__, "model_type": config.model_type, "main": main.tolist()}
    print(json.dumps(report))
    """
)


def test_each_family_exports_as_an_hf_vit_folder_that_loads_without_hf_vit(tmp_path):
    pixel_values = torch.randn(2, 3, *OTHER_SIZE, generator=torch.Generator().manual_seed(2))
    torch.save(pixel_values, tmp_path / "pixels.pt")
    expected, folders = {}, []
    for family in ("vit_mae-pretraining", "deit-with-teacher", "dinov2-swiglu-classifier",
                   "dinov2_with_registers-classifier"):
        make, hf_vit_class, compared = FAMILIES[family]
        reference = _randomise(make())
        reference.save_pretrained(tmp_path / "source" / family)
        model = hf_vit_class.from_pretrained(tmp_path / "source" / family)
        folder = tmp_path / "exported" / family
        model.save_pretrained(folder)
        for name in ("configuration_hf_vit.py", "modeling_hf_vit.py", "transformers_vit_format.py"):
            assert (folder / name).exists()
        expected[str(folder)] = _reference_outputs(reference, pixel_values, interpolate=True)[compared[0]]
        folders.append(folder)
    result = run_without_hf_vit(_REMOTE_SCRIPT, tmp_path / "pixels.pt", *folders, tmp_path=tmp_path)
    for folder, want in expected.items():
        got = result[folder]
        assert got["model_type"] == "hf_vit" and got["module"].startswith("transformers_modules"), got
        assert _max_diff(got["main"], want) < TOLERANCE, folder


# ---- base size (slow) ----------------------------------------------------------------------------------------------

B_T = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224)
BASE_FAMILIES = {
    "vit_mae-B/16": (lambda: transformers.ViTMAEModel(transformers.ViTMAEConfig(**B_T, patch_size=16, mask_ratio=0.0)),
                     ViTModel, "last_hidden_state"),
    "deit-B/16-with-teacher": (lambda: transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
        **B_T, patch_size=16, **_labels(10))), ViTForImageClassification, "logits"),
    "dinov2-B/14": (lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        **B_T, patch_size=14, **_labels(10))), ViTForImageClassification, "logits"),
    "dinov2_with_registers-B/14": (lambda: transformers.Dinov2WithRegistersForImageClassification(
        transformers.Dinov2WithRegistersConfig(**B_T, patch_size=14, num_register_tokens=4, **_labels(10))),
        ViTForImageClassification, "logits"),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(BASE_FAMILIES))
def test_base_size_reproduces_transformers(family, tmp_path):
    make, hf_vit_class, key = BASE_FAMILIES[family]
    reference = _perturb(make())
    reference.save_pretrained(tmp_path)
    model = hf_vit_class.from_pretrained(tmp_path).eval()
    patch = model.config.patch_size
    for size in (None, (224 + 2 * patch, 224 + 4 * patch)):
        pixel_values = torch.randn(1, 3, *(size or (224, 224)), generator=torch.Generator().manual_seed(1))
        theirs = _reference_outputs(reference, pixel_values, size is not None)[key]
        with torch.no_grad():
            ours = model(pixel_values, interpolate_pos_encoding=size is not None)[key]
        difference = _max_diff(ours, theirs)
        print(f"{family} {key} at {size or 'source size'}: max |hf_vit - transformers| = {difference:.2g} "
              f"(values up to {theirs.abs().max():.3g})")
        assert difference < TOLERANCE, difference


# ---- timm ----------------------------------------------------------------------------------------------------------

TIMM_SHAPE = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=7)
TIMM_FAMILIES = {
    # name: (timm entry point, its arguments on top of TIMM_SHAPE)
    "mae-encoder": ("vit_base_patch16_224.mae", dict(num_classes=0)),
    "mae-fine-tuned-fc_norm": ("vit_base_patch16_224", dict(global_pool="avg", fc_norm=True)),
    "deit-distilled": ("deit_base_distilled_patch16_224", dict()),
    "deit3-layer-scale": ("deit3_base_patch16_224", dict()),
    "dinov2": ("vit_small_patch14_dinov2", dict(init_values=1e-5)),
    "dinov2-g-swiglu": ("vit_giant_patch14_dinov2", dict(init_values=1e-5, mlp_ratio=2.66667 * 2)),
    "dinov2-registers": ("vit_small_patch14_reg4_dinov2", dict(init_values=1e-5, reg_tokens=4, no_embed_class=True)),
}


@needs_timm
@pytest.mark.parametrize("family", list(TIMM_FAMILIES))
def test_timm_state_dicts_reproduce_timm(family, tmp_path):
    import timm

    architecture, extra = TIMM_FAMILIES[family]
    reference = _randomise(timm.create_model(architecture, pretrained=False, dynamic_img_size=True,
                                             **{**TIMM_SHAPE, **extra}), std=0.1)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    # timm resamples bicubic, anti-aliased, on the half-pixel grid: pinned on the hf_vit side for the second size.
    model, report = load_timm(tmp_path / "timm.safetensors", num_attention_heads=4, check=True,
                              output_loading_info=True, position_embedding_interpolation="bicubic",
                              position_embedding_align_corners=False, position_embedding_antialias=True)
    assert report.unused_keys == [] and report.max_abs_difference["timm"] < TOLERANCE
    for size in (None, OTHER_SIZE):
        pixel_values = torch.randn(2, 3, *(size or (32, 32)), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            theirs = reference.forward_features(pixel_values)
            ours = model.vit(pixel_values, interpolate_pos_encoding=size is not None)
            difference = _max_diff(ours.last_hidden_state, theirs)
            if model.config.num_labels:
                logits = model(pixel_values, interpolate_pos_encoding=size is not None).logits
                difference = max(difference, _max_diff(logits, reference.forward_head(theirs)))
        print(f"timm {family} at {size or 'source size'}: max |hf_vit - timm| = {difference:.2g}")
        assert difference < TOLERANCE, (size, difference)
