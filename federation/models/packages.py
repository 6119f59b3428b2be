"""Model packages: ordinary Python distributions that register models under the entry-point
group ``fedhealth.models``, each identified by its name, version and a digest of its files.

A site runs only model code its operator installed and its data owner approved, identified
by digest (issue #14). :func:`installed_model_packages` lists what is installed, each
package's digest computed from the files on disk (never from what its RECORD claims), so a
changed file changes the digest. :func:`load_model` finds one registered model of one package
and refuses it, naming the package and both digests, when the installed files differ from
the ones the study names.

An entry point names a factory: ``factory(config: Mapping[str, object]) -> ModelAdapter``
(:class:`federation.models.base.ModelAdapter`), the interface the built-in models implement.
The interface's version is :data:`INTERFACE_VERSION`; a package states the version it
implements in its entry point's ``extras`` (``[interface-1]``) or is taken to mean version 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from federation.errors import ConfigurationError

#: The entry-point group a model package registers its models under.
ENTRY_POINT_GROUP = "fedhealth.models"
#: The version of the adapter interface (``ModelAdapter``) the platform speaks.
INTERFACE_VERSION = 1
#: Files a digest leaves out: byte code is written by whoever imports the package.
_IGNORED_SUFFIXES = (".pyc",)

Factory = Callable[[Mapping[str, object]], object]


@dataclass(frozen=True)
class ModelPackage:
    """One installed distribution that registers models."""

    name: str
    version: str
    digest: str
    models: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "models": list(self.models),
        }


def _normalised(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def distribution_digest(distribution: metadata.Distribution) -> str:
    """SHA-256 over the distribution's installed files (path and content, sorted by path),
    byte code and the RECORD file itself left out: what would run, as it is on disk."""
    files = distribution.files
    if files is None:
        raise ConfigurationError(
            f"{distribution.metadata['Name']}: the installation lists no files (no RECORD)"
        )
    entries: list[tuple[str, str]] = []
    for file in files:
        path = str(file).replace("\\", "/")
        if path.endswith(_IGNORED_SUFFIXES) or path.endswith(".dist-info/RECORD"):
            continue
        located = Path(str(file.locate()))
        if not located.is_file():
            raise ConfigurationError(f"{distribution.metadata['Name']}: {path} is listed but missing")
        entries.append((path, hashlib.sha256(located.read_bytes()).hexdigest()))
    digest = hashlib.sha256()
    for path, content in sorted(entries):
        digest.update(f"{path}\0{content}\n".encode())
    return digest.hexdigest()


def _registering(
    paths: Iterable[str] | None,
) -> dict[str, tuple[metadata.Distribution, list[metadata.EntryPoint]]]:
    found: dict[str, tuple[metadata.Distribution, list[metadata.EntryPoint]]] = {}
    distributions = (
        metadata.distributions(path=list(paths)) if paths is not None else metadata.distributions()
    )
    for distribution in distributions:
        points = [point for point in distribution.entry_points if point.group == ENTRY_POINT_GROUP]
        name = _normalised(distribution.metadata["Name"])
        if points and name not in found:  # the first on the path wins, as imports do
            found[name] = (distribution, points)
    return found


def installed_model_packages(paths: Iterable[str] | None = None) -> list[ModelPackage]:
    """Every installed distribution registering models, with its digest (``paths``: search
    these folders instead of ``sys.path``)."""
    return [
        ModelPackage(
            name=_normalised(distribution.metadata["Name"]),
            version=distribution.version,
            digest=distribution_digest(distribution),
            models=tuple(sorted(point.name for point in points)),
        )
        for distribution, points in sorted(_registering(paths).values(), key=lambda pair: pair[1][0].name)
    ]


def load_model(package: str, model: str, *, digest: str, paths: Iterable[str] | None = None) -> Factory:
    """The factory of ``model`` in ``package``, once the installed files match ``digest``;
    :class:`ConfigurationError` naming the package, the model and the digests otherwise."""
    found = _registering(paths).get(_normalised(package))
    if found is None:
        raise ConfigurationError(f"model package {package!r} is not installed at this site")
    distribution, points = found
    seen = distribution_digest(distribution)
    if seen != digest.lower():
        raise ConfigurationError(
            f"model package {package!r} {distribution.version} is installed with digest {seen}; "
            f"the study names {digest.lower()}"
        )
    point = next((p for p in points if p.name == model), None)
    if point is None:
        raise ConfigurationError(
            f"model package {package!r} registers no model {model!r} "
            f"(it has: {', '.join(p.name for p in points)})"
        )
    if any(
        extra.startswith("interface-") and extra != f"interface-{INTERFACE_VERSION}" for extra in point.extras
    ):
        raise ConfigurationError(
            f"model {model!r} of {package!r} implements {point.extras}; "
            f"this platform speaks interface-{INTERFACE_VERSION}"
        )
    factory = point.load()
    if not callable(factory):
        raise ConfigurationError(f"model {model!r} of {package!r} does not name a factory")
    return factory  # type: ignore[no-any-return]
