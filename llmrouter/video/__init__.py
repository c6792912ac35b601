"""Async video generation tasks (seed 001): create, poll, list, cancel, sweep."""

from .tasks import VideoTask, VideoTasks

__all__ = ["VideoTask", "VideoTasks"]
