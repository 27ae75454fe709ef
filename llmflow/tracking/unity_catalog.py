"""Unity Catalog's limits on the registry objects we write: names, tags, signatures.

With ``MLFLOW_REGISTRY_URI=databricks-uc`` (MLflow's default registry on Databricks since MLflow 3), the
registered models and model versions live in Unity Catalog, whose securable tags are limited
(Databricks, "Apply tags to Unity Catalog securable objects"):

- at most 50 tags on one object;
- a key of at most 255 characters, without any of ``. , - = / :``;
- a value of at most 1,000 characters.

Run tags stay in the MLflow tracking store and are not bound by these. :func:`tag_problems` names every
breach, one line each; :func:`uc_tags` is the form of a tag set that fits (keys with ``_`` for the
forbidden characters, long values cut, with what was cut returned for the version's description).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_TAGS = 50
MAX_KEY_LENGTH = 255
MAX_VALUE_LENGTH = 1000
FORBIDDEN_KEY_CHARACTERS = ".,-=/:"
_FORBIDDEN = re.compile(f"[{re.escape(FORBIDDEN_KEY_CHARACTERS)}]")
# catalog.schema.model: three identifiers without the characters UC refuses in names.
THREE_LEVEL_NAME = re.compile(r"^[^.\s/]+\.[^.\s/]+\.[^.\s/]+$")


def tag_problems(tags: dict[str, str], where: str) -> list[str]:
    """One line for each way ``tags`` (the tags of one registry object, named ``where``) breaks UC's limits."""
    problems = []
    if len(tags) > MAX_TAGS:
        problems.append(f"{where}: {len(tags)} tags; Unity Catalog allows at most {MAX_TAGS} on one object")
    for key, value in sorted(tags.items()):
        if len(key) > MAX_KEY_LENGTH:
            problems.append(f"{where}: tag key {key!r} has {len(key)} characters; at most {MAX_KEY_LENGTH}")
        if bad := sorted(set(_FORBIDDEN.findall(key))):
            problems.append(f"{where}: tag key {key!r} has {' '.join(bad)}; not allowed: {FORBIDDEN_KEY_CHARACTERS}")
        if len(value or "") > MAX_VALUE_LENGTH:
            problems.append(f"{where}: tag {key!r} value has {len(value)} characters; at most {MAX_VALUE_LENGTH}")
    return problems


def uc_key(key: str) -> str:
    """``key`` with each character Unity Catalog refuses in a tag key replaced by ``_`` (``a.b-c`` -> ``a_b_c``)."""
    return _FORBIDDEN.sub("_", key)[:MAX_KEY_LENGTH]


@dataclass(frozen=True)
class UcTags:
    tags: dict[str, str]
    # Full values of the tags that were cut, for the version's description.
    cut: dict[str, str] = field(default_factory=dict)


def uc_tags(tags: dict[str, str]) -> UcTags:
    """The tags as Unity Catalog takes them: keys through :func:`uc_key`, values cut to 1,000 characters.

    A cut value ends in ``…`` and is returned in full in ``cut``, so the caller can write it into the
    version's description, the place for long text.
    """
    out: dict[str, str] = {}
    cut: dict[str, str] = {}
    for key, value in tags.items():
        new_key = uc_key(key)
        if new_key in out:
            raise ValueError(f"tag keys {key!r} and another map to the same Unity Catalog key {new_key!r}")
        if len(value) > MAX_VALUE_LENGTH:
            cut[key] = value
            value = value[: MAX_VALUE_LENGTH - 1] + "…"
        out[new_key] = value
    if len(out) > MAX_TAGS:
        raise ValueError(f"{len(out)} tags on one object; Unity Catalog allows at most {MAX_TAGS}")
    return UcTags(out, cut)


def is_three_level(name: str) -> bool:
    """Whether ``name`` is a Unity Catalog model name, ``catalog.schema.model``."""
    return bool(THREE_LEVEL_NAME.match(name))
