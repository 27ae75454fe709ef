"""The served model: loaded in the background, and, for ``models:/<name>@<alias>``, following the alias.

``ModelHolder.current`` is ``None`` while the first load runs (``/health`` answers 503), then a ``Served``: the
pyfunc, its scheduler and what it is (URI, version, logged model id). With a poll interval, a thread reads the
alias every so many seconds; when it names another version, that version is loaded beside the one serving, then
``current`` is switched to it in one assignment (requests read it once, on arrival), and the old scheduler is
closed: it finishes the requests it already has, then its thread ends and the old model is dropped.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow

from .metrics import Metrics
from .scheduler import BatchScheduler

logger = logging.getLogger(__name__)

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class Target:
    """What a model URI names now: the URI to load, its registered version (or ``None``), its logged model id and
    that logged model's experiment (where its traces go, so the MLflow UI shows them on the model)."""

    load_uri: str
    version: str | None
    model_id: str | None
    experiment_id: str | None = None


@dataclass
class Served:
    target: Target
    name: str
    model: Any
    scheduler: BatchScheduler

    @property
    def label(self) -> str:
        """The ``model`` field of every response: the served name and the version that answered."""
        return f"{self.name}:{self.target.version}" if self.target.version else self.name


def served_names(model_uri: str, name: str, served: Served | None) -> frozenset[str]:
    """The names a request's ``model`` may give for the one model served: the served name (``--served-name``, else
    the registered name, else the URI), the URI with and without ``models:/`` (``name@alias``, ``name/3``,
    ``m-<id>``), the registered name, the ``model`` of the answers (``name:version``) and the model's own
    ``model_name`` (what its ``/invocations`` answers say)."""
    names = {name, model_uri, model_uri.removeprefix("models:/")}
    if match := ALIAS_URI.match(model_uri) or VERSION_URI.match(model_uri):
        names.add(match["name"])
    if served is not None:
        names.add(served.label)
        if own := getattr(served.model, "model_name", None):
            names.add(str(own))
    return frozenset(names)


def _model_id(version: Any) -> str | None:
    """The logged model behind a registered version (older stores leave ``model_id`` empty; the source names it)."""
    source = str(version.source or "")
    return version.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def _experiment_of(client: mlflow.MlflowClient, model_id: str | None) -> str | None:
    if model_id is None:
        return None
    try:
        return client.get_logged_model(model_id).experiment_id
    except Exception:  # a store without the logged model: traces go to the active experiment
        logger.warning("logged model %s not found; traces go to the active experiment", model_id)
        return None


def chat_backend(model: Any, uri: str) -> Any:
    """What the scheduler drives (``prepare``, ``generate``, ``context_length``) for a loaded pyfunc model: the
    project's ONNX chat pyfunc itself, or a transformers ``llm/v1/chat`` model in a ``TransformersChat``."""
    if "transformers" in model.metadata.flavors:
        from .transformers_chat import TransformersChat  # torch and transformers: only for this flavour

        return TransformersChat.from_pyfunc(model)
    python_model = model.unwrap_python_model()
    for needed in ("prepare", "generate", "context_length"):
        if not hasattr(python_model, needed):
            raise TypeError(
                f"{uri} is neither an ONNX chat pyfunc of this project nor a transformers llm/v1/chat model "
                f"(no {needed!r})"
            )
    return python_model


def resolve(model_uri: str) -> Target:
    """The version a ``models:/`` URI names now (the alias read from the registry), or the URI as it is."""
    client = mlflow.MlflowClient()
    load_uri, version, model_id = model_uri, None, None
    if match := ALIAS_URI.match(model_uri):
        found = client.get_model_version_by_alias(match["name"], match["alias"])
        load_uri, version, model_id = f"models:/{match['name']}/{found.version}", str(found.version), _model_id(found)
    elif match := VERSION_URI.match(model_uri):
        found = client.get_model_version(match["name"], match["version"])
        version, model_id = str(found.version), _model_id(found)
    elif model_uri.startswith("models:/m-"):
        model_id = model_uri.removeprefix("models:/")
    return Target(load_uri, version, model_id, _experiment_of(client, model_id))


class ModelHolder:
    """Loads ``model_uri`` and keeps ``current`` serving; ``poll_s`` > 0 follows an alias."""

    def __init__(
        self,
        model_uri: str,
        name: str,
        metrics: Metrics,
        scheduler: Callable[[Any, str], BatchScheduler],
        poll_s: float = 0.0,
    ) -> None:
        self.model_uri, self.name, self.metrics, self.make_scheduler, self.poll_s = (
            model_uri,
            name,
            metrics,
            scheduler,
            poll_s,
        )
        self.current: Served | None = None
        self.error: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="model-holder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _load(self, target: Target) -> Served:
        logger.info("loading %s (version %s) ...", target.load_uri, target.version)
        python_model = chat_backend(mlflow.pyfunc.load_model(target.load_uri), target.load_uri)
        scheduler = self.make_scheduler(python_model, target.version or "0")
        logger.info("loaded %s (version %s)", target.load_uri, target.version)
        return Served(target, self.name, python_model, scheduler)

    def _switch(self, served: Served) -> None:
        old, self.current = self.current, served
        if old is not None:
            self.metrics.model_switches.inc()
            logger.info("now serving version %s (was %s)", served.target.version, old.target.version)
            old.scheduler.close()

    def _run(self) -> None:
        try:
            self._switch(self._load(resolve(self.model_uri)))
        except Exception as error:  # the server stays up and says why in /health
            self.error = f"{type(error).__name__}: {error}"
            logger.exception("could not load %s", self.model_uri)
            return
        if not (self.poll_s > 0 and ALIAS_URI.match(self.model_uri)):
            return
        while not self.stopping.wait(self.poll_s):
            try:
                target = resolve(self.model_uri)
                if target.version != self.current.target.version:
                    self._switch(self._load(target))
            except Exception:  # a registry hiccup or a bad new version: keep serving the one loaded
                logger.exception("could not follow %s; still serving version %s", self.model_uri, self.current)
