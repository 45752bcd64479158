"""The generic model test class: every hf_vit model class and every architecture variant runs through it.

A test module subclasses `ModelTesterMixin` and sets:
- `model_class`: the class under test;
- `variants`: name -> ViTConfig overrides (on top of `TINY`); every test runs once per variant;
- capability flags where a class differs (e.g. `has_labels`).
"""

import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from hf_vit import ViTConfig
from hf_vit.configuration_hf_vit import GRID_BOUND_POSITION_TYPES


# Tiny on purpose: the whole suite has to run in minutes on 2 CPU cores.
TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    num_labels=3,
)


# A hybrid with tiny widths: stem 8 channels (64 x 0.125), two stages of one unit (stride 8), 1x1 patches on the
# feature map: a 4x4 token grid at 32x32, as TINY's plain grid.
TINY_HYBRID = dict(backbone_depths=[1, 1], backbone_width_factor=0.125, backbone_num_groups=4, patch_size=1)


def make_config(variant=None, **overrides) -> ViTConfig:
    return ViTConfig(**{**TINY, **(variant or {}), **overrides})


def pixel_values_for(config, batch_size=2, size=None, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    height, width = size if size is not None else config.image_hw
    return torch.randn(batch_size, config.num_channels, height, width, generator=generator)


def first_tensor(output) -> torch.Tensor:
    """The main output of any hf_vit model: logits for heads, last_hidden_state for the bare model, the last feature
    map for the backbone. Also for `return_dict=False` tuples (whose first entry is the backbone's feature maps)."""
    if isinstance(output, tuple):
        return output[0][-1] if isinstance(output[0], tuple) else output[0]
    if hasattr(output, "logits"):
        return output.logits
    if hasattr(output, "feature_maps"):
        return output.feature_maps[-1]
    return output.last_hidden_state


def labels_for(config, batch_size=2, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.num_labels, (batch_size,), generator=generator)


class ModelTesterMixin:
    model_class = None
    variants = {"default": {}}
    has_labels = True
    # Tolerances: fp32 on CPU, different kernels (fused sdpa vs explicit softmax) agree to ~1e-6 at this size.
    atol = 1e-5

    # ---- helpers --------------------------------------------------------------------------------------------------

    def build(self, variant, **overrides):
        config = make_config(variant, **overrides)
        torch.manual_seed(0)
        model = self.model_class(config)
        self._perturb(model)
        return model.eval()

    @staticmethod
    def _perturb(model):
        # Zero-initialised parts (class token, head) would hide bugs (an all-zero head makes every logit equal):
        # move every parameter off its initial value.
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.02)

    def unused_parameters(self, model) -> set[str]:
        """Parameters no output of the model reads, by the architecture itself (so none gets a gradient): a classifier
        with class-token pooling reads only the class token's row of the last block, and with relative attention the
        last block's patch-to-patch offsets never touch that row."""
        config = model.config
        if self.has_labels and config.pooling == "cls" and config.position_embedding_type == "relative":
            return {f"vit.encoder.layers.{config.num_hidden_layers - 1}.attention.relative_position_embeddings"}
        return set()

    def forward(self, model, pixel_values, **kwargs):
        return model(pixel_values, **kwargs)

    def expected_logits_shape(self, config, batch_size) -> tuple:
        """Shape of `logits` for a batch at the config's resolution (a head with another output overrides it)."""
        return (batch_size, config.num_labels)

    def loss_of(self, model, pixel_values, config):
        if self.has_labels:
            return self.forward(model, pixel_values, labels=labels_for(config, pixel_values.shape[0])).loss
        out = self.forward(model, pixel_values)
        loss = first_tensor(out).pow(2).mean()
        if getattr(out, "pooler_output", None) is not None:
            loss = loss + out.pooler_output.pow(2).mean()
        return loss

    # ---- tests ----------------------------------------------------------------------------------------------------

    def test_output_shapes(self, variant):
        model = self.build(variant)
        config = model.config
        pixel_values = pixel_values_for(config, batch_size=3)
        with torch.no_grad():
            out = self.forward(model, pixel_values)
        main = first_tensor(out)
        if hasattr(out, "logits"):
            assert main.shape == self.expected_logits_shape(config, 3)
        elif hasattr(out, "feature_maps"):
            assert len(out.feature_maps) == len(config.out_features)
            assert all(f.shape == (3, config.hidden_size, *config.grid_size) for f in out.feature_maps)
        else:
            assert main.shape == (3, config.num_prefix_tokens + config.num_patches, config.hidden_size)
            width = config.representation_size or config.pooled_size
            assert out.pooler_output.shape == (3, width)
        assert torch.isfinite(main).all()

    def test_backward_reaches_every_parameter(self, variant):
        model = self.build(variant).train()
        config = model.config
        loss = self.loss_of(model, pixel_values_for(config), config)
        loss.backward()
        missing = {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)}
        assert missing == self.unused_parameters(model), f"no gradient reaches {sorted(missing)}"

    def test_save_load_round_trip(self, variant, tmp_path):
        model = self.build(variant)
        pixel_values = pixel_values_for(model.config)
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
        reloaded = self.model_class.from_pretrained(tmp_path).eval()
        assert reloaded.config.to_diff_dict() == model.config.to_diff_dict()
        with torch.no_grad():
            torch.testing.assert_close(first_tensor(self.forward(reloaded, pixel_values)), first_tensor(self.forward(model, pixel_values)), rtol=0, atol=0)

    def test_eval_is_deterministic(self, variant):
        model = self.build(variant, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        pixel_values = pixel_values_for(model.config)
        with torch.no_grad():
            a = first_tensor(self.forward(model, pixel_values))
            b = first_tensor(self.forward(model, pixel_values))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        # ... and dropout is live in training mode (so the check above could have failed).
        model.train()
        with torch.no_grad():
            c = first_tensor(self.forward(model, pixel_values))
        assert not torch.equal(a, c)

    def test_batch_independence(self, variant):
        model = self.build(variant)
        pixel_values = pixel_values_for(model.config, batch_size=4)
        with torch.no_grad():
            batched = first_tensor(self.forward(model, pixel_values))
            single = torch.cat([first_tensor(self.forward(model, pixel_values[i : i + 1])) for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=self.atol)

    def test_hidden_states_and_attentions(self, variant):
        model = self.build(variant)
        config = model.config
        tokens = config.num_prefix_tokens + config.num_patches
        with torch.no_grad():
            out = self.forward(model, pixel_values_for(config), output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert all(h.shape == (2, tokens, config.hidden_size) for h in out.hidden_states)
        assert len(out.attentions) == config.num_hidden_layers
        for weights in out.attentions:
            assert weights.shape == (2, config.num_attention_heads, tokens, tokens)
            torch.testing.assert_close(weights.sum(-1), torch.ones(2, config.num_attention_heads, tokens))
        with torch.no_grad():
            plain = self.forward(model, pixel_values_for(config))
        assert plain.hidden_states is None and plain.attentions is None

    @pytest.mark.parametrize("implementation", ["eager", "sdpa"])
    def test_attentions_are_real_whatever_the_backend(self, variant, implementation):
        model = self.build(variant)
        model.set_attn_implementation(implementation)
        pixel_values = pixel_values_for(model.config)
        with torch.no_grad():
            out = self.forward(model, pixel_values, output_attentions=True)
            reference = self.build(variant)
            reference.set_attn_implementation("eager")
            expected = self.forward(reference, pixel_values, output_attentions=True)
        assert len(out.attentions) == model.config.num_hidden_layers
        for got, want in zip(out.attentions, expected.attentions):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    def test_attention_backends_agree(self, variant):
        pixel_values = pixel_values_for(make_config(variant))
        outputs = {}
        for implementation in ("eager", "sdpa"):
            model = self.build(variant)
            model.set_attn_implementation(implementation)
            assert model.config._attn_implementation == implementation
            with torch.no_grad():
                outputs[implementation] = first_tensor(self.forward(model, pixel_values))
        torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-5, atol=self.atol)

    def test_gradient_checkpointing_parity(self, variant):
        config = make_config(variant)
        pixel_values = pixel_values_for(config)
        grads = []
        for checkpointing in (False, True):
            model = self.build(variant).train()
            if checkpointing:
                model.activation_checkpointing_enable()
                assert all(layer.gradient_checkpointing for layer in model.base_model.encoder.layers)
                backbone = model.base_model.embeddings.patch_embeddings.backbone
                if backbone is not None:  # the hybrid's ResNet units are checkpointed too
                    units = [unit for stage in backbone.stages for unit in stage.units]
                    assert all(unit.gradient_checkpointing for unit in units)
            loss = self.loss_of(model, pixel_values, config)
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)

    def test_position_embedding_interpolation(self, variant):
        model = self.build(variant)
        config = model.config
        ph, pw = config.token_pixel_size  # the patch on the image (x the ResNet's stride for a hybrid)
        height, width = config.image_hw
        # Same size with the flag: exactly the plain forward.
        same = pixel_values_for(config)
        with torch.no_grad():
            torch.testing.assert_close(
                first_tensor(self.forward(model, same, interpolate_pos_encoding=True)), first_tensor(self.forward(model, same)), rtol=0, atol=0
            )
        # Larger and non-square input: needs the flag where the position information is a learned table of the grid
        # ("learned_1d", "learned_2d", "relative"), then works; "none" and "sincos_2d" take any grid as it is.
        bigger = pixel_values_for(config, size=(height + 2 * ph, width + pw))
        if config.position_embedding_type in GRID_BOUND_POSITION_TYPES:
            with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
                self.forward(model, bigger)
        else:
            with torch.no_grad():
                torch.testing.assert_close(
                    first_tensor(self.forward(model, bigger)),
                    first_tensor(self.forward(model, bigger, interpolate_pos_encoding=True)),
                    rtol=0,
                    atol=0,
                )
        with torch.no_grad():
            out = first_tensor(self.forward(model, bigger, interpolate_pos_encoding=True))
        assert torch.isfinite(out).all()
        assert out.shape[0] == 2
        # Not a multiple of the patch: a clear error either way.
        with pytest.raises(ValueError, match="divisible by the patch size"):
            self.forward(model, pixel_values_for(config, size=(height + 1, width)), interpolate_pos_encoding=True)

    def test_resize_position_embeddings_persists(self, variant, tmp_path):
        model = self.build(variant)
        config = model.config
        ph, pw = config.token_pixel_size
        new_size = (config.image_hw[0] + 2 * ph, config.image_hw[1] + 2 * pw)
        pixel_values = pixel_values_for(config, size=new_size)
        with torch.no_grad():
            on_the_fly = first_tensor(self.forward(model, pixel_values, interpolate_pos_encoding=True))
        model.resize_position_embeddings(new_size)
        assert tuple(model.config.image_hw) == new_size
        with torch.no_grad():
            resized = first_tensor(self.forward(model, pixel_values))
        torch.testing.assert_close(resized, on_the_fly, rtol=0, atol=0)
        model.save_pretrained(tmp_path)
        reloaded = self.model_class.from_pretrained(tmp_path).eval()
        assert tuple(reloaded.config.image_hw) == new_size
        with torch.no_grad():
            torch.testing.assert_close(first_tensor(self.forward(reloaded, pixel_values)), resized, rtol=0, atol=0)

    def test_bf16_forward(self, variant, tmp_path):
        model = self.build(variant)
        model.save_pretrained(tmp_path)
        half = self.model_class.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
        assert all(p.dtype == torch.bfloat16 for p in half.parameters())
        pixel_values = pixel_values_for(model.config)
        with torch.no_grad():
            got = first_tensor(self.forward(half, pixel_values)).float()
            want = first_tensor(self.forward(model, pixel_values))
        assert torch.isfinite(got).all()
        # bf16 keeps ~3 significant digits; through 2 tiny layers the error stays well under 5% of the scale.
        assert (got - want).abs().max() <= 0.05 * want.abs().max() + 1e-2

    def test_int8_dynamic_quantization(self, variant):
        # The standard CPU serving step, exactly as users call it on transformers' and timm's ViT: every nn.Linear
        # becomes an int8 module whose `weight` is a method, so nothing may use `layer.weight` as a tensor.
        model = self.build(variant)
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        replaced = [m for m in quantized.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
        assert len(replaced) == linears and not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
        pixel_values = pixel_values_for(model.config)
        with torch.no_grad():
            got = first_tensor(self.forward(quantized, pixel_values))
            want = first_tensor(self.forward(model, pixel_values))
        assert got.shape == want.shape
        # int8 weights (one scale per matrix) and activations (a 7-bit range on x86, one scale per call): on these tiny
        # random models the largest error is 4.5% of the output's scale (0.13 of 2.96, learned 2D positions); a wrong
        # slice of the fused qkv or a lost bias moves the outputs by their whole scale.
        assert (got - want).abs().max() <= 0.08 * want.abs().max() + 1e-2

    def test_return_dict_false_gives_tuple(self, variant):
        model = self.build(variant)
        pixel_values = pixel_values_for(model.config)
        with torch.no_grad():
            as_tuple = self.forward(model, pixel_values, return_dict=False)
            as_output = self.forward(model, pixel_values)
        assert isinstance(as_tuple, tuple)
        # Entry by entry the output's fields in order (a head's loss first when it computes one).
        expected = as_output.to_tuple()
        assert len(as_tuple) == len(expected)
        torch.testing.assert_close(as_tuple, expected, rtol=0, atol=0)

    def test_rebuilds_from_a_config_copy(self, variant):
        # The config is the only thing the model reads: a copy of it rebuilds a model the weights load into exactly.
        model = self.build(variant)
        config = copy.deepcopy(model.config)
        rebuilt = self.model_class(config).eval()
        rebuilt.load_state_dict(model.state_dict())
        pixel_values = pixel_values_for(config)
        with torch.no_grad():
            torch.testing.assert_close(first_tensor(self.forward(rebuilt, pixel_values)), first_tensor(self.forward(model, pixel_values)), rtol=0, atol=0)


# ---- running code where hf_vit is not installed (remote code) --------------------------------------------------------

# Prepended to a script run by `run_without_hf_vit` (hf_vit's own remote-code check uses the same prelude).
from hf_vit.hub.validation import HIDE_HF_VIT  # noqa: E402


def run_without_hf_vit(script: str, *args, tmp_path, env=None, timeout=300) -> dict:
    """Run `script` (after `HIDE_HF_VIT`) in a fresh interpreter where hf_vit cannot be imported, offline, with its
    own modules cache; it must print one JSON line last, which is returned."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", HIDE_HF_VIT + script, *map(str, args)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
