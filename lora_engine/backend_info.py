"""What the engine loaded, as the app, results and a cluster's ingress describe it: one frozen dataclass.

What this is for: the facts about a loaded base model that code without torch needs (the request limits and
defaults the app shows, the Ray ingress's routing by base model and its checks). ``pipeline.backend`` fills it
when it loads the pipeline and re-exports it.
What it is not for: configuration (``config``), the limits' definition (``request.RequestLimits``), or anything
that touches the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import EngineConfig
from .request import RequestLimits

__all__ = ["BackendInfo"]


@dataclass(frozen=True)
class BackendInfo:
    """What the app and the results say about the loaded model.

    Args:
        model_id (`str`): what was loaded (a Hub id, a folder, or the demo's id).
        base_model_id (`str`): the id LoRA cards must name.
        accepted_base_models (`tuple[str, ...]`): all base ids accepted.
        device (`str`), dtype (`str`): where and how it runs.
        is_demo (`bool`): the built-in offline demo model.
        limits (`RequestLimits`): what requests must satisfy, and the defaults that fit the model.
        local_lora_dirs (`tuple[str, ...]`): local LoRA folders (the demo's included).
    """

    model_id: str
    base_model_id: str
    accepted_base_models: tuple[str, ...]
    device: str
    dtype: str
    is_demo: bool
    limits: RequestLimits
    local_lora_dirs: tuple[str, ...]

    @classmethod
    def describe(
        cls,
        config: EngineConfig,
        *,
        model_id: str,
        base_model_id: str,
        device,
        dtype,
        is_demo: bool,
        extra_lora_dirs: tuple[str, ...] = (),
    ) -> BackendInfo:
        """The info for a loaded model: ``config``'s limits, with request defaults that fit the model where it
        leaves them unset (``RequestLimits.for_model``); ``device``/``dtype`` as torch prints them."""
        return cls(
            model_id=model_id,
            base_model_id=base_model_id,
            accepted_base_models=(base_model_id, *config.extra_base_models),
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            is_demo=is_demo,
            limits=RequestLimits.for_model(config, is_demo=is_demo),
            local_lora_dirs=(*config.local_lora_dirs, *extra_lora_dirs),
        )
