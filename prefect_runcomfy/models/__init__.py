"""The models a run can be given: each one module, its facts in one `ModelSpec`."""

from prefect_runcomfy.models.base import MediaKind, ModelInput, ModelSpec
from prefect_runcomfy.models.infinite_talk import INFINITE_TALK, InfiniteTalkInput

__all__ = ["INFINITE_TALK", "InfiniteTalkInput", "MediaKind", "ModelInput", "ModelSpec"]
