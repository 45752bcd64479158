"""hf_vit: the Vision Transformer of "An Image is Worth 16x16 Words", Hugging Face-compatible.

Importing the package registers its classes with transformers' Auto classes (model_type "hf_vit").
"""

__version__ = "0.1.0"

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForPreTraining,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

from .configuration_hf_vit import HYBRID_VARIANTS, VIT_VARIANTS, ViTConfig
from .image_processing_hf_vit import ViTImageProcessor
from .modeling_hf_vit import (
    ViTBackbone,
    ViTForImageClassification,
    ViTForMaskedAutoencoding,
    ViTForMaskedPatchPrediction,
    ViTModel,
    ViTPreTrainedModel,
    resample_position_embeddings,
)


def _register():
    # exist_ok: transformers already knows a class *named* ViTConfig (its own, model_type "vit"); the Auto mappings
    # compare by name. hf_vit's serve model_type "hf_vit"; transformers' "vit" keeps mapping to transformers' ViT.
    AutoConfig.register(ViTConfig.model_type, ViTConfig, exist_ok=True)
    AutoModel.register(ViTConfig, ViTModel, exist_ok=True)
    AutoModelForImageClassification.register(ViTConfig, ViTForImageClassification, exist_ok=True)
    AutoBackbone.register(ViTConfig, ViTBackbone, exist_ok=True)
    # The paper's masked patch prediction is hf_vit's masked-image-modeling head (transformers' SimMIM has the slot
    # for its own ViT).
    AutoModelForMaskedImageModeling.register(ViTConfig, ViTForMaskedPatchPrediction, exist_ok=True)
    # MAE takes the pre-training slot, where transformers registers its ViTMAEForPreTraining.
    AutoModelForPreTraining.register(ViTConfig, ViTForMaskedAutoencoding, exist_ok=True)
    # NOTE: straight into the mapping rather than `AutoImageProcessor.register`, which first looks the config class up
    # by *name* and so loads transformers' own ViT processors, whose torchvision backend then warns on every import
    # that torchvision is missing. Registering both backends replaces that lookup's result entirely anyway.
    IMAGE_PROCESSOR_MAPPING.register(
        ViTConfig, {"pil": ViTImageProcessor, "torchvision": ViTImageProcessor}, exist_ok=True
    )
    # pipeline() also looks for a video processor, and reads the AutoImageProcessor entry of `auto_map` as a remote
    # video processor: it would ask whether to trust remote code although hf_vit is installed. Declare that hf_vit
    # has no video processor, so the lookup fails quietly instead.
    VIDEO_PROCESSOR_MAPPING.register(ViTConfig, {}, exist_ok=True)
    # Remote code: save_pretrained copies the modeling files next to the weights and writes `auto_map`.
    ViTConfig.register_for_auto_class("AutoConfig")
    ViTModel.register_for_auto_class("AutoModel")
    ViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    ViTBackbone.register_for_auto_class("AutoBackbone")
    ViTForMaskedPatchPrediction.register_for_auto_class("AutoModelForMaskedImageModeling")
    ViTForMaskedAutoencoding.register_for_auto_class("AutoModelForPreTraining")
    ViTImageProcessor.register_for_auto_class("AutoImageProcessor")


_register()

__all__ = [
    "HYBRID_VARIANTS",
    "VIT_VARIANTS",
    "ViTBackbone",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTForMaskedAutoencoding",
    "ViTForMaskedPatchPrediction",
    "ViTImageProcessor",
    "ViTModel",
    "ViTPreTrainedModel",
    "__version__",
    "resample_position_embeddings",
]
