"""The module catalog: built-in manifests, the user's, and manifest paths given directly.

A MODULE argument is a path when it names an existing file or contains a ``/`` or ends in
``.yaml``/``.yml``; otherwise it is a catalog name. The user's manifests in
``$LAS_HOME/modules/*.yaml`` shadow built-in ones of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localaistack.control.manifest import LoadedManifest, load_manifest_file
from localaistack.control.names import BUILTIN_DIR, check_name, is_manifest_path
from localaistack.errors import ManifestError, UsageError


@dataclass(frozen=True)
class CatalogEntry:
    """One manifest file found in the catalog, loaded or broken."""

    path: Path
    source: str
    loaded: LoadedManifest | None
    error: ManifestError | None


def _scan(directory: Path, source: str) -> list[CatalogEntry]:
    if not directory.is_dir():
        return []
    out = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            out.append(CatalogEntry(path, source, load_manifest_file(path, source), None))
        except ManifestError as exc:
            out.append(CatalogEntry(path, source, None, exc))
    return out


def catalog_entries(home: Path) -> list[CatalogEntry]:
    """All manifests: the user's first, then built-in ones that the user's do not shadow."""
    user = _scan(home / "modules", "user")
    names = {e.loaded.manifest.name for e in user if e.loaded}
    builtin = [
        e
        for e in _scan(BUILTIN_DIR, "builtin")
        if not (e.loaded and e.loaded.manifest.name in names)
    ]
    return user + builtin


def resolve_module(arg: str, home: Path) -> LoadedManifest:
    """Find a module by catalog name or manifest path.

    Raises:
        ManifestError: when the manifest is invalid.
        UsageError: when no module has that name.
    """
    if is_manifest_path(arg):
        return load_manifest_file(Path(arg).expanduser().absolute(), "file")
    try:
        check_name(arg, "module name")
    except ValueError as exc:
        raise UsageError(f"invalid module name: {exc}", hint="see `las modules`") from exc
    entries = catalog_entries(home)
    for entry in entries:
        if entry.loaded and entry.loaded.manifest.name == arg:
            return entry.loaded
    for entry in entries:
        if entry.error and entry.path.stem == arg:
            raise entry.error
    known = ", ".join(sorted(e.loaded.manifest.name for e in entries if e.loaded))
    raise UsageError(
        f"unknown module {arg!r}",
        hint=f"known modules: {known}; or give a manifest path (./my-module.yaml)",
    )
