"""The scripted life of a fake upstream's video task, shared by the Ark and OpenRouter fakes.

A ``TaskPlan`` lists the statuses a task goes through, in our vocabulary (``queued``,
``running``, ``succeeded``, ``failed``, ``cancelled``, ``expired``): it is created in the
first, each GET moves it one step on and shows that, and the last one stays. Each fake
renders the status in its own words.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskPlan:
    steps: tuple[str, ...] = ("queued", "running", "succeeded")
    #: progress percent shown at each step (OpenRouter only; none when shorter)
    progress: tuple[int, ...] = ()
    #: the reason a failed task gives
    error: str = "The request failed because the output video may be related to sensitive content."
    error_code: str = "OutputVideoSensitiveContentDetected"
    #: what a succeeded task reports using: Ark's tokens, OpenRouter's cost (the JSON
    #: number's text, written verbatim)
    completion_tokens: int = 108900
    cost: str = "0.5"
    #: the seconds Ark reports generating (None: the requested duration)
    duration: int | None = None

    @classmethod
    def succeeding(cls, **kwargs: Any) -> TaskPlan:
        return cls(**kwargs)

    @classmethod
    def failing(cls, **kwargs: Any) -> TaskPlan:
        return cls(steps=("queued", "running", "failed"), **kwargs)

    @classmethod
    def expiring(cls, **kwargs: Any) -> TaskPlan:
        return cls(steps=("queued", "expired"), **kwargs)

    @classmethod
    def staying_queued(cls, **kwargs: Any) -> TaskPlan:
        return cls(steps=("queued",), **kwargs)

    @classmethod
    def running(cls, **kwargs: Any) -> TaskPlan:
        """Starts at once and never ends (a task Ark will not cancel)."""
        return cls(steps=("running",), **kwargs)


@dataclass
class FakeTask:
    id: str
    model: str
    body: dict[str, Any]
    plan: TaskPlan
    created_at: int
    step: int = 0
    #: set by a cancel: overrides the plan from then on
    forced: str | None = None

    @property
    def status(self) -> str:
        return self.forced or self.plan.steps[self.step]

    @property
    def progress(self) -> int | None:
        return self.plan.progress[self.step] if self.step < len(self.plan.progress) else None

    def advance(self) -> None:
        if self.forced is None:
            self.step = min(self.step + 1, len(self.plan.steps) - 1)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class TaskBook:
    """The tasks of one fake, the plan new tasks get, and every request it received."""

    plan: TaskPlan = field(default_factory=TaskPlan)
    #: plans for the next tasks created, in order (then ``plan``)
    next_plans: list[TaskPlan] = field(default_factory=list)
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append(Recorded(method, path, body))

    def create(self, prefix: str, model: str, body: dict[str, Any], now: int) -> FakeTask:
        with self._lock:
            plan = self.next_plans.pop(0) if self.next_plans else self.plan
            task = FakeTask(f"{prefix}{next(self._ids):06d}", model, body, plan, now)
            self.tasks[task.id] = task
            return task

    def count(self, method: str, path_part: str = "") -> int:
        """How many ``method`` requests went to a path containing ``path_part``."""
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and path_part in r.path)

    def reset(self) -> None:
        with self._lock:
            self.plan = TaskPlan()
            self.next_plans.clear()
            self.tasks.clear()
            self.requests.clear()
