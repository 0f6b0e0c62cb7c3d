"""What the engine loaded, as the app, results and a cluster's ingress describe it: one frozen dataclass.

What this is for: the facts about a loaded base model that code without torch needs (the app's defaults, the
Ray ingress's routing by base model). ``torch_backend`` fills it when it loads the pipeline and re-exports it.
What it is not for: configuration (``config``), or anything that touches the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        default_steps (`int`), default_side (`int`), default_guidance (`float`): request defaults that fit it.
        local_lora_dirs (`tuple[str, ...]`): local LoRA folders (the demo's included).
    """

    model_id: str
    base_model_id: str
    accepted_base_models: tuple[str, ...]
    device: str
    dtype: str
    is_demo: bool
    default_steps: int
    default_side: int
    default_guidance: float
    local_lora_dirs: tuple[str, ...]
