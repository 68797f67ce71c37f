"""A small kustomize: builds deploy/k8s's kustomizations by reading them, for machines without a
`kustomize` or `kubectl` binary (CI installs neither; where `kubectl` exists the tests compare
this build with `kubectl kustomize`).

It implements only what the project's kustomizations use (resources, namespace, labels, images,
configMapGenerator with files) and refuses anything else, so a new feature in a kustomization
fails loudly here instead of being ignored. Like kustomize's default load restrictor
(LoadRestrictionsRootOnly) it refuses a file outside the kustomization's own folder; other
kustomization folders may be anywhere, but not one that contains the kustomization being built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "build", "index"]

_KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "configMapGenerator",
}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}


class KustomizeError(ValueError):
    """A kustomization this builder (or kustomize itself) would refuse."""


def build(directory: Path, _visited: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` outputs (order aside)."""
    root = directory.resolve()
    for seen in _visited:
        if seen == root or seen.is_relative_to(root):
            raise KustomizeError(f"cycle: {root} contains {seen}, already being built")
    visited = (*_visited, root)
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{root}: not supported by this builder: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        target = (root / resource).resolve()
        if target.is_dir():
            objects += build(target, visited)
        else:
            _inside(root, target)
            objects += [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
    objects += _generated_config_maps(root, kustomization.get("configMapGenerator", []))
    for entry in kustomization.get("labels", []):
        _add_labels(objects, entry)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    return objects


def index(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Objects by (kind, namespace, name); a duplicate is an error, as in kustomize."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        if key in found:
            raise KustomizeError(f"duplicate object {key}")
        found[key] = obj
    return found


def _inside(root: Path, path: Path) -> None:
    if not path.resolve().is_relative_to(root):
        raise KustomizeError(f"{path} is outside the kustomization root {root} (load restrictor)")


def _generated_config_maps(root: Path, generators: list[dict[str, Any]]) -> list[dict[str, Any]]:
    maps = []
    for generator in generators:
        unknown = set(generator) - {"name", "files", "options"}
        options = generator.get("options", {})
        unknown |= set(options) - {"disableNameSuffixHash", "labels"}
        if unknown:
            raise KustomizeError(f"configMapGenerator: not supported: {sorted(unknown)}")
        if options.get("disableNameSuffixHash") is not True:
            raise KustomizeError("configMapGenerator: only disableNameSuffixHash: true is built")
        data = {}
        for spec in generator["files"]:
            key, _, source = spec.rpartition("=") if "=" in spec else ("", "", spec)
            path = root / source
            _inside(root, path)
            data[key or path.name] = path.read_text()
        metadata: dict[str, Any] = {"name": generator["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return maps


def _add_labels(objects: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    if entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise KustomizeError("labels: only metadata labels (includeSelectors: false) are built")
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])


def _containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = (spec.get("template") or {}).get("spec") or {}
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _image_name(reference: str) -> str:
    """`registry:5000/app:1.0@sha256:...` -> `registry:5000/app` (no tag, no digest)."""
    reference = reference.split("@")[0]
    head, sep, tag = reference.rpartition(":")
    return head if sep and "/" not in tag else reference


def _set_image(objects: list[dict[str, Any]], image: dict[str, Any]) -> None:
    for obj in objects:
        for container in _containers(obj):
            name = _image_name(container["image"])
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "newTag" in image:
                new += f":{image['newTag']}"
            container["image"] = new
