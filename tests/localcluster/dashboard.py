"""The chart's Grafana dashboard asked of a Prometheus as Grafana asks it, without Grafana.

Its query variables are resolved in order (``label_values(selector, label)``, each selector with
the variables before it filled in), every panel query then gets the chosen values in Grafana's
multi-value regex form ``(a|b)``, and runs as a range query over the time the test chose. The
queries are what breaks when labels change, so they are what the tests evaluate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from localcluster.prometheus import label_values, query_range
from tests.operator_harness import REPO_ROOT

DASHBOARD = REPO_ROOT / "charts" / "acceltrain" / "dashboards" / "acceltrain.json"
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]+)\)$")


@dataclass(frozen=True)
class Window:
    """A range query's span and resolution (Unix seconds)."""

    start: float
    end: float
    step: float = 2.0


@dataclass(frozen=True)
class PanelAnswer:
    title: str
    expr: str
    """The panel's query with the variables filled in, as it was sent."""
    series: list[dict[str, Any]]


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


_REGEX_SPECIALS = re.compile(r"([\\^$*+?.()|{}\[\]])")


def _escaped(value: str) -> str:
    """A value as Grafana writes it into a PromQL regex string: each regex metacharacter behind
    a backslash, doubled because the regex sits in a string literal."""
    return _REGEX_SPECIALS.sub(r"\\\\\1", value)


def fill(expr: str, values: dict[str, list[str]]) -> str:
    """``$name`` replaced by the chosen values as Grafana writes a multi-value variable into a
    regex matcher: each value escaped, joined as ``(a|b)``."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", "(" + "|".join(map(_escaped, values[name])) + ")")
    return expr


def variable_values(
    base_url: str, dashboard: dict[str, Any], window: Window
) -> dict[str, list[str]]:
    """Every query variable's options, each one with all of them chosen (Grafana's "All")."""
    values: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = _LABEL_VALUES.match(variable["query"])
        assert found, f"variable {variable['name']}: not a label_values query: {variable['query']}"
        selector = fill(found.group("selector"), values)
        values[variable["name"]] = label_values(
            base_url, found.group("label"), selector, start=window.start, end=window.end
        )
    return values


def panel_answers(
    base_url: str, dashboard: dict[str, Any], values: dict[str, list[str]], window: Window
) -> list[PanelAnswer]:
    answers = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = fill(target["expr"], values)
            series = query_range(
                base_url, expr, start=window.start, end=window.end, step=window.step
            )
            answers.append(PanelAnswer(panel["title"], expr, series))
    return answers
