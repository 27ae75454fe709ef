"""Run a job of the Databricks bundle (``databricks.yml``) on this machine: its wiring, not Databricks.

    python deploy/databricks/local_job.py llmflow_pipeline --param model=build/tiny-phi3 \
        --param registered_model_name=tiny_phi3 --values-dir build/task-values

What it does, in the Jobs service's place:
- reads the bundle as the Databricks CLI would: ``databricks.yml``, its ``include`` files, and each
  ``${var.<name>}`` filled from the variables' defaults (or ``--var name=value``), complex ones included;
- orders the job's tasks by ``depends_on`` and runs each one as its own process, the way Databricks runs
  a ``spark_python_task``: the file's source compiled and ``exec``'d as ``__main__`` with the task's
  parameters as ``sys.argv[1:]`` and no ``__file__`` (Databricks defines none), in the file's own folder
  (the working directory of a script on Databricks Runtime 14 and later), with that folder and not the
  repository root on ``sys.path``. That is the strictest of the layouts a Databricks task may see, so a
  step that starts here finds its package there too;
- fills ``{{job.parameters.<name>}}`` from the job's parameter defaults (or ``--param name=value``) and
  ``{{tasks.<task>.values.<name>}}`` from what that task published. A step publishes its result through
  ``llmflow.tracking.task_values.publish``; here that writes the file named by ``LLMFLOW_TASK_VALUES_FILE``,
  on Databricks it calls ``dbutils.jobs.taskValues.set``;
- stops at the first failed task, as a job whose tasks all have ``run_if: ALL_SUCCESS`` does.

What it does not do: start clusters, install the task's libraries (the tasks use this machine's Python),
apply the clusters' ``spark_env_vars`` (MLflow uses this machine's ``MLFLOW_TRACKING_URI``), read secrets,
check out ``git_source``, or honour retries, timeouts and schedules.
"""

from __future__ import annotations

import argparse
import copy
import graphlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
VAR_REF = re.compile(r"\$\{var\.([\w-]+)\}")
BUNDLE_REF = re.compile(r"\$\{bundle\.(name|target)\}")
DYNAMIC_REF = re.compile(r"\{\{\s*(job\.parameters|tasks)\.([\w-]+)(?:\.values\.([\w-]+))?\s*\}\}")
# Run a file as Databricks runs a Python script task: compiled source exec'd as __main__, no __file__.
LAUNCHER = (
    "import sys; path = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "exec(compile(open(path, 'rb').read(), path, 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})"
)


class BundleError(ValueError):
    """The bundle or a job in it cannot be read or run as written."""


def _substitute(value: Any, variables: dict[str, Any], bundle: dict[str, str]) -> Any:
    """``value`` with every ``${var.x}`` and ``${bundle.x}`` filled in; a whole-string reference keeps its type."""
    if isinstance(value, dict):
        return {key: _substitute(item, variables, bundle) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, variables, bundle) for item in value]
    if not isinstance(value, str):
        return value
    if (whole := VAR_REF.fullmatch(value)) and whole.group(1) in variables:
        return copy.deepcopy(variables[whole.group(1)])

    def var(match: re.Match[str]) -> str:
        if match.group(1) not in variables:
            raise BundleError(f"${{var.{match.group(1)}}} is not a variable of the bundle; known: {sorted(variables)}")
        resolved = variables[match.group(1)]
        if not isinstance(resolved, str | int | float | bool):
            raise BundleError(f"complex variable ${{var.{match.group(1)}}} is used inside a string: {value!r}")
        return str(resolved)

    return BUNDLE_REF.sub(lambda m: bundle[m.group(1)], VAR_REF.sub(var, value))


def load_bundle(
    root: Path = ROOT, target: str | None = None, overrides: dict[str, str] | None = None
) -> dict[str, Any]:
    """The bundle at ``root`` with its includes merged and every variable reference resolved."""
    spec = yaml.safe_load((root / "databricks.yml").read_text())
    resources: dict[str, dict[str, Any]] = {}
    for pattern in spec.get("include", []):
        for path in sorted(root.glob(pattern)):
            for kind, items in (yaml.safe_load(path.read_text()).get("resources") or {}).items():
                for key, item in items.items():
                    if key in resources.setdefault(kind, {}):
                        raise BundleError(f"resource {kind}.{key} is defined twice (again in {path})")
                    resources[kind][key] = item
    for kind, items in (spec.get("resources") or {}).items():
        resources.setdefault(kind, {}).update(items)
    targets = spec.get("targets") or {}
    target = target or next((name for name, t in targets.items() if (t or {}).get("default")), "default")
    variables = {name: decl.get("default") for name, decl in (spec.get("variables") or {}).items()}
    unknown = set(overrides or {}) - set(variables)
    if unknown:
        raise BundleError(f"--var {sorted(unknown)} is not a variable of the bundle; known: {sorted(variables)}")
    variables.update(overrides or {})
    bundle = {"name": spec["bundle"]["name"], "target": target}
    return {"bundle": bundle, "variables": variables, "resources": _substitute(resources, variables, bundle)}


def task_order(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's tasks in an order that runs every task after the tasks it depends on."""
    tasks = {task["task_key"]: task for task in job["tasks"]}
    graph = {key: {dep["task_key"] for dep in task.get("depends_on", [])} for key, task in tasks.items()}
    for key, deps in graph.items():
        if missing := deps - set(tasks):
            raise BundleError(f"task {key} depends on {sorted(missing)}, which the job does not have")
    return [tasks[key] for key in graphlib.TopologicalSorter(graph).static_order()]


def ancestors(job: dict[str, Any], task_key: str) -> set[str]:
    """Every task that ``task_key`` runs after, directly or not."""
    tasks = {task["task_key"]: task for task in job["tasks"]}
    seen: set[str] = set()
    todo = [dep["task_key"] for dep in tasks[task_key].get("depends_on", [])]
    while todo:
        if (key := todo.pop()) not in seen:
            seen.add(key)
            todo.extend(dep["task_key"] for dep in tasks[key].get("depends_on", []))
    return seen


def fill(text: str, parameters: dict[str, str], values: dict[str, dict[str, Any]]) -> str:
    """``text`` with ``{{job.parameters.x}}`` and ``{{tasks.t.values.x}}`` filled in, as the Jobs service does."""

    def one(match: re.Match[str]) -> str:
        kind, name, value_name = match.groups()
        if kind == "job.parameters":
            if name not in parameters:
                raise BundleError(f"{match.group(0)}: the job has no parameter '{name}'; it has {sorted(parameters)}")
            return parameters[name]
        if value_name is None:
            expected = "{{tasks.<task>.values.<name>}}"
            raise BundleError(f"{match.group(0)} is not a task value reference; expected {expected}")
        if name not in values or value_name not in values[name]:
            raise BundleError(f"{match.group(0)}: task '{name}' set no value '{value_name}'")
        value = values[name][value_name]
        return json.dumps(value) if isinstance(value, bool) else str(value)

    return DYNAMIC_REF.sub(one, text)


def run_job(
    job: dict[str, Any], values_dir: Path, parameters: dict[str, str] | None = None, python: str = sys.executable
) -> dict[str, dict[str, Any]]:
    """Run every task of ``job`` in dependency order; return the values each task set. Raise on a failed task."""
    declared = {param["name"]: str(param.get("default", "")) for param in job.get("parameters", [])}
    if unknown := set(parameters or {}) - set(declared):
        raise BundleError(f"--param {sorted(unknown)} is not a parameter of job {job['name']}; has {sorted(declared)}")
    declared.update(parameters or {})
    values_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, dict[str, Any]] = {}
    for task in task_order(job):
        key = task["task_key"]
        spec = task["spark_python_task"]
        argv = [fill(str(arg), declared, values) for arg in spec.get("parameters", [])]
        values_file = values_dir / f"{key}.json"
        values_file.unlink(missing_ok=True)
        env = {**os.environ, "LLMFLOW_TASK_VALUES_FILE": str(values_file)}
        started = time.monotonic()
        print(f"[{key}] {spec['python_file']} {' '.join(argv)}", flush=True)
        script = ROOT / spec["python_file"]
        done = subprocess.run([python, "-c", LAUNCHER, str(script), *argv], cwd=script.parent, env=env)
        if done.returncode != 0:
            raise BundleError(f"task {key} failed with exit status {done.returncode}; the tasks after it did not run")
        values[key] = json.loads(values_file.read_text()) if values_file.is_file() else {}
        print(f"[{key}] done in {time.monotonic() - started:.1f} s, values {values[key]}", flush=True)
    return values


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise BundleError(f"{flag} {item!r} is not accepted; expected name=value")
        pairs[name] = value
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="Job key under resources.jobs, e.g. llmflow_pipeline.")
    parser.add_argument("--param", action="append", default=[], help="Job parameter name=value (repeatable).")
    parser.add_argument("--var", action="append", default=[], help="Bundle variable name=value (repeatable).")
    parser.add_argument("--target", default=None, help="Bundle target (default: the target marked default).")
    parser.add_argument("--values-dir", type=Path, default=ROOT / "build" / "task-values", help="Task value files.")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(ROOT, args.target, _pairs(args.var, "--var"))
        jobs = bundle["resources"].get("jobs", {})
        if args.job not in jobs:
            raise BundleError(f"job {args.job!r} is not in the bundle; it has {sorted(jobs)}")
        values = run_job(jobs[args.job], args.values_dir, _pairs(args.param, "--param"))
    except BundleError as exc:
        print(f"error: local_job: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(values, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
