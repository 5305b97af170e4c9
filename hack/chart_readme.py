"""Writes charts/acceltrain/README.md from the chart itself: Chart.yaml, every value of values.yaml
with its ``# --`` comment (the helm-docs convention), and every variable and panel of the Grafana
dashboard with its description and query. `make chart-readme` writes it; the test suite fails when
it drifts, so the README cannot describe a value or a panel the chart does not have.

    python hack/chart_readme.py --write | --check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster.tools import pinned_versions

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "acceltrain"
README = CHART / "README.md"
DASHBOARD = CHART / "dashboards" / "acceltrain.json"
DOC_MARK = "# -- "
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


@dataclass(frozen=True)
class Value:
    key: str
    type: str
    default: str
    description: str


def documented_values(text: str) -> list[Value]:
    """Each key that has a ``# --`` comment block right above it, with its dotted path."""
    loaded = yaml.safe_load(text)
    values: list[Value] = []
    path: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing the current line
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(DOC_MARK):
            comment = [stripped.removeprefix(DOC_MARK)]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if not match:
            comment = [] if not stripped else comment
            continue
        indent = len(match.group("indent"))
        path = [(level, key) for level, key in path if level < indent] + [(indent, match["key"])]
        if comment:
            keys = [key for _, key in path]
            values.append(_value(".".join(keys), _lookup(loaded, keys), " ".join(comment)))
        comment = []
    return values


def undocumented_values(text: str) -> list[str]:
    """Keys of values.yaml that neither have a ``# --`` comment nor sit under a key that has."""
    documented = {value.key for value in documented_values(text)}

    def walk(tree: Any, prefix: str) -> list[str]:
        if prefix in documented:
            return []
        if isinstance(tree, dict) and tree:
            return [key for k, v in tree.items() for key in walk(v, f"{prefix}.{k}".lstrip("."))]
        return [prefix]

    return walk(yaml.safe_load(text), "")


def _lookup(tree: Any, keys: list[str]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree


def _value(key: str, default: Any, description: str) -> Value:
    kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}
    return Value(
        key=key,
        type=kind.get(type(default), type(default).__name__),
        default=json.dumps(default, separators=(", ", ": ")),
        description=description,
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def values_table(values: list[Value]) -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    rows += [
        f"| `{v.key}` | {v.type} | `{_cell(v.default)}` | {_cell(v.description)} |" for v in values
    ]
    return "\n".join(rows)


def dashboard_section(dashboard: dict[str, Any]) -> str:
    lines = [f'`{DASHBOARD.relative_to(CHART)}` ("{dashboard["title"]}"). Variables:', ""]
    for variable in dashboard["templating"]["list"]:
        lines.append(f"- `${variable['name']}`: {variable.get('label') or variable['query']}")
        if variable["type"] == "query":
            lines[-1] = f"- `${variable['name']}`: `{variable['query']}`"
    lines += ["", "Panels, top to bottom:", ""]
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        description = panel.get("description")
        if not description:
            raise SystemExit(
                f"chart_readme.py: dashboard panel {panel['title']!r} has no description"
            )
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        lines.append(f"### {panel['title']}")
        lines += ["", description + (f" Unit: `{unit}`." if unit else ""), ""]
        lines += [f"```promql\n{target['expr']}\n```" for target in panel["targets"]]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values_text = (CHART / "values.yaml").read_text()
    missing = undocumented_values(values_text)
    if missing:
        raise SystemExit(
            f"chart_readme.py: values.yaml keys without a '# -- ' comment: {', '.join(missing)}"
        )
    values = documented_values(values_text)
    dashboard = json.loads(DASHBOARD.read_text())
    operator_version = pinned_versions()["PROMETHEUS_OPERATOR_VERSION"]
    return f"""<!-- Generated by `make chart-readme` (hack/chart_readme.py) from Chart.yaml,
values.yaml and dashboards/acceltrain.json. Do not edit: change those, then `make chart-readme`. -->
# {chart["name"]}

{chart["description"]}

Chart {chart["version"]}, operator {chart["appVersion"]}, Kubernetes `{chart["kubeVersion"]}`.

## Install

```bash
helm install acceltrain charts/acceltrain --namespace acceltrain-system --create-namespace \\
    --set trainer.image=ghcr.io/acceltrain/trainer:{chart["appVersion"]}
```

With the Prometheus Operator (its CRDs installed), let it scrape the operator and every rank of
every trainer pod; the labels are those your Prometheus selects monitors by:

```bash
helm upgrade --install acceltrain charts/acceltrain --namespace acceltrain-system \\
    --set metrics.serviceMonitor.enabled=true \\
    --set metrics.serviceMonitor.labels.release=prometheus \\
    --set metrics.podMonitor.enabled=true \\
    --set metrics.podMonitor.labels.release=prometheus \\
    --set grafanaDashboard.enabled=true
```

The suite installs the chart this way on its local cluster with the Prometheus Operator
{operator_version} and runs Prometheus on the configuration the operator generates from these
monitors; every dashboard query below then returns one series per AccelTrainJob (per rank where
it says so) and no label is renamed to `exported_*`.

Without it, Prometheus's pod discovery finds trainer pods by their `prometheus.io/scrape` and
`prometheus.io/port` annotations, which name local rank 0's port only: use the PodMonitor (or a
scrape job that keeps every container port named `metrics` or `metrics-<n>`) to see every rank.
The metrics themselves are listed in the repository's README.

## Values

Every value below is checked by `values.schema.json`, which refuses unknown keys.

{values_table(values)}

## Grafana dashboard

{dashboard_section(dashboard)}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write charts/acceltrain/README.md")
    mode.add_argument("--check", action="store_true", help="fail when the README is out of date")
    args = parser.parse_args()
    wanted = readme()
    if args.write:
        README.write_text(wanted)
        return 0
    if not README.exists() or README.read_text() != wanted:
        print(
            f"{README.relative_to(REPO_ROOT)} is out of date: run `make chart-readme`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
