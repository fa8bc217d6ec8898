#!/usr/bin/env python3
"""`helm template` and `helm lint` for this repository's chart without a helm binary:
the pinned PyPI package helm-python-sdk (deploy/requirements.txt) embeds Helm v4's Go
SDK. Run with deploy/.venv's python (scripts/deploy-venv.sh prints its path).

  helm.py template CHART [-f VALUES]... [--set-json JSON] [--name NAME] [--namespace NS]
  helm.py lint CHART [-f VALUES]... [--set-json JSON]

`template` prints the manifests as one YAML stream, each document headed by
`# Source: <template>`, in Helm's install order. `lint` prints the findings and exits
non-zero on any warning or error (`helm lint --strict`).
"""

import argparse
import json
import re
import sys

import helm_python as helm

# Helm's install order (pkg/release/util/kind_sorter.go), the kinds this chart uses
# and their neighbours; anything else goes last, as in Helm.
ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget",
    "ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role",
    "RoleBinding", "Service", "DaemonSet", "Pod", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "Ingress",
]


def merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def values(args):
    out = {}
    for path in args.values or []:
        with open(path, encoding="utf-8") as f:
            merge(out, helm.values_from_yaml(f.read()) or {})
    for text in args.set_json or []:
        merge(out, json.loads(text))
    return out


def template(args):
    chart = helm.Chart.load(args.chart)
    rendered = chart.render(values(args), name=args.name, namespace=args.namespace, is_install=True)
    docs = []
    for source in sorted(rendered):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt, helpers
        for doc in re.split(r"^---\s*$", rendered[source], flags=re.M):
            body = "\n".join(
                line for line in doc.strip("\n").splitlines() if not line.startswith("# Source:")
            ).strip("\n")
            if not re.search(r"^kind:", body, flags=re.M):
                continue  # empty, or only comments
            kind = re.search(r"^kind:\s*(\S+)", body, flags=re.M).group(1)
            rank = ORDER.index(kind) if kind in ORDER else len(ORDER)
            docs.append((rank, source, body))
    docs.sort(key=lambda d: (d[0], d[1]))
    sys.stdout.write("".join(f"---\n# Source: {src}\n{body}\n" for _, src, body in docs))


def lint(args):
    report = helm.lint(args.chart, values(args), strict=True, namespace=args.namespace)
    bad = False
    for m in report.get("messages") or []:
        level = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m.get("severity"), "UNKNOWN")
        print(f"[{level}] {m.get('path', '')}: {m.get('error', '')}")
        bad |= m.get("severity", 0) >= 2
    for e in report.get("errors") or []:
        print(f"[ERROR] {e}")
        bad = True
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {'failed' if bad else 'no failures'}")
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["template", "lint"])
    p.add_argument("chart")
    p.add_argument("-f", "--values", action="append")
    p.add_argument("--set-json", action="append", help="values as a JSON object, merged last")
    p.add_argument("--name", default="switchyard")
    p.add_argument("--namespace", default="default")
    args = p.parse_args()
    if args.command == "template":
        template(args)
        return 0
    return lint(args)


if __name__ == "__main__":
    sys.exit(main())
