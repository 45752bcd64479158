"""Publishing hf_vit models to the Hugging Face Hub: model cards rendered from the run folder's own records,
repository assembly, offline validation (the repository must load where hf_vit is not installed) and upload.
Publishing needs a model folder, not training: any hf_vit model folder can be published. See docs/hub.md."""

from .cards import check_model_card, load_card_data, render_model_card
from .options import PublishOptions, PushArguments
from .publish import HubPublishError, PublishResult, check_can_publish, publish_run, push, upload_repository
from .repository import assemble_repository
from .validation import validate_repository


__all__ = [
    "HubPublishError",
    "PublishOptions",
    "PublishResult",
    "PushArguments",
    "assemble_repository",
    "check_can_publish",
    "check_model_card",
    "load_card_data",
    "publish_run",
    "push",
    "render_model_card",
    "upload_repository",
    "validate_repository",
]
