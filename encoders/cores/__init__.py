"""Cores: shared feature extractors mapping stimuli (B, C_in, H, W) to features (B, C, h, w)."""

from encoders.cores.base import Core
from encoders.cores.data_driven import StackedCore
from encoders.cores.task_driven import TaskDrivenCore

__all__ = ["Core", "StackedCore", "TaskDrivenCore"]
