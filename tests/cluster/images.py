"""OCI image archives written from files, for a node that can reach no image registry.

The test node needs a sandbox ("pause") image and small probe images. No
registry is reachable here, so they are written as OCI image-layout tarballs
(one uncompressed layer) and loaded with ``ctr -n k8s.io images import``.
Deterministic: the same files give the same digests, so a cached archive is
reused as long as its inputs do not change.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class File:
    """One file of the image: its bytes and mode (directories are made as needed)."""

    data: bytes
    mode: int = 0o755


@dataclass(frozen=True)
class Image:
    name: str  # e.g. registry.invalid/sortie/pause:1
    files: Mapping[str, File]
    entrypoint: tuple[str, ...]
    user: str = "65532:65532"
    env: tuple[str, ...] = ("PATH=/bin",)
    labels: Mapping[str, str] = field(default_factory=dict)


def _tar_member(archive: tarfile.TarFile, name: str, data: bytes, mode: int, directory: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.mode = mode
    if directory:
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    else:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def _layer(files: Mapping[str, File]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directories = sorted({"/".join(path.strip("/").split("/")[:depth])
                              for path in files for depth in range(1, path.strip("/").count("/") + 1)})
        for directory in ["tmp"] + [d for d in directories if d != "tmp"]:
            _tar_member(archive, directory, b"", 0o1777 if directory == "tmp" else 0o755, directory=True)
        for path in sorted(files):
            _tar_member(archive, path.strip("/"), files[path].data, files[path].mode)
    return buffer.getvalue()


def _blob(archive: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    _tar_member(archive, f"blobs/sha256/{digest}", data, 0o644)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(image: Image, path: Path) -> Path:
    """Write ``image`` as an OCI image-layout tarball at ``path``."""
    layer = _layer(image.files)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": list(image.entrypoint), "User": image.user, "Env": list(image.env),
                   "Labels": dict(image.labels)},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as archive:
        layer_ref = {"mediaType": LAYER, **_blob(archive, layer)}
        config_ref = {"mediaType": CONFIG, **_blob(archive, config)}
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": config_ref,
                               "layers": [layer_ref]}, sort_keys=True).encode()
        manifest_ref = {"mediaType": MANIFEST, **_blob(archive, manifest)}
        tag = image.name.rsplit(":", 1)[1]
        index = {"schemaVersion": 2, "manifests": [{
            **manifest_ref,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag},
        }]}
        _tar_member(archive, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644)
        _tar_member(archive, "index.json", json.dumps(index, sort_keys=True).encode(), 0o644)
    return path
