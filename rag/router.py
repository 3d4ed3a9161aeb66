"""Which task a question is and which model answers it: rules from settings, then a default."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rag.schema import Route


@dataclass(frozen=True)
class CompiledRule:
    task: str
    model: str
    patterns: tuple[re.Pattern[str], ...]


class RuleRouter:
    def __init__(
        self,
        rules: Sequence[tuple[str, str, Sequence[str]]],
        default_task: str,
        default_model: str,
        known_models: Mapping[str, object],
    ) -> None:
        for task, model, _ in rules:
            if model not in known_models:
                raise ValueError(
                    f"router rule for task {task!r} names model {model!r}, which is not in "
                    f"generation.models ({', '.join(known_models)})"
                )
        if default_model not in known_models:
            raise ValueError(
                f"router.default_model {default_model!r} is not in generation.models "
                f"({', '.join(known_models)})"
            )
        self.rules = tuple(
            CompiledRule(task, model, tuple(re.compile(p, re.IGNORECASE) for p in patterns))
            for task, model, patterns in rules
        )
        self.default_task = default_task
        self.default_model = default_model

    def route(self, question: str, task_hints: Sequence[str] = ()) -> Route:
        for rule in self.rules:
            if rule.task in task_hints:
                return Route(rule.task, rule.model, 1.0, "caller's task hint")
        matched = [rule for rule in self.rules if any(p.search(question) for p in rule.patterns)]
        if matched:
            runner_up = matched[1].task if len(matched) > 1 else self.default_task
            first = matched[0]
            return Route(first.task, first.model, 1.0, "rule match", runner_up=runner_up)
        # Rules are binary; a question no rule claims goes to the default with no confidence
        # claimed either way (the similarity router will score it).
        return Route(self.default_task, self.default_model, 0.5, "no rule matched: default route")
