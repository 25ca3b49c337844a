"""The evidence manifest: SHA-256 of every evidence file, the run's identity, an optional signature.

``evidence-manifest.json`` sits in the reports directory and lists every file under it (except
itself and its signature) with its size and SHA-256, plus who produced it (suite version) and
what it is evidence of (run id, release, bundle, start and finish). With a signing key
(Ed25519, PEM) the exact bytes of the manifest are signed into
``evidence-manifest.json.sig`` (base64) and the public key is named in the manifest.

``verify`` recomputes everything and reports each changed, missing or added file; with a
trusted public key it also proves who signed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import caracal_restore

MANIFEST = "evidence-manifest.json"
SIGNATURE = MANIFEST + ".sig"
FORMAT = "caracal-restore/evidence-manifest/v1"
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A key or manifest cannot be used (the message says why and what to do)."""


def evidence_files(root: Path, exclude_dirs: Sequence[str] = ()) -> Iterator[Path]:
    """Every regular file under ``root`` except the manifest and its signature, sorted.

    ``exclude_dirs`` names top-level directories of derived output (the rendered HTML report)
    that are not evidence. Symbolic links are not followed (a link could point outside the
    evidence), and are left out.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        if base == root:
            dirnames[:] = [d for d in dirnames if d not in exclude_dirs]
        dirnames.sort()
        for name in filenames:
            path = base / name
            rel = path.relative_to(root)
            if rel.as_posix() in (MANIFEST, SIGNATURE) or path.is_symlink() or not path.is_file():
                continue
            found.append(path)
    yield from sorted(found, key=lambda p: p.relative_to(root).as_posix())


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(root: Path, exclude_dirs: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``relative posix path -> {sha256, size}`` for every evidence file under ``root``."""
    table: dict[str, dict[str, Any]] = {}
    for path in evidence_files(root, exclude_dirs):
        try:
            table[path.relative_to(root).as_posix()] = {"sha256": sha256(path),
                                                        "size": path.stat().st_size}
        except FileNotFoundError:  # removed while we walked: it is not evidence of this run
            continue
    return table


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted Ed25519 private key in PEM (``openssl genpkey -algorithm ed25519``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ManifestError(f"the signing key {path} is encrypted; give an unencrypted PEM "
                            "(keep it in the CI's secret store)") from None
    except ValueError:
        raise ManifestError(f"{path} is not a PEM private key; create one with "
                            "`python -m caracal_restore.evidence keygen KEY.pem`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestError(f"the signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key in PEM (a private key PEM is accepted too)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read the public key {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ManifestError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestError(f"the public key {path} is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    """The public key as PEM text."""
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def build(root: Path, run: Mapping[str, Any], *, public_key: Ed25519PublicKey | None = None,
          exclude_dirs: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest document for the evidence under ``root``."""
    files = file_table(root, exclude_dirs)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "suite": {"name": "caracal-restore", "version": caracal_restore.__version__},
        "run": dict(run),
        "algorithm": "sha256",
        "excluded_dirs": sorted(exclude_dirs),
        "file_count": len(files),
        "files": files,
    }
    if public_key is not None:
        doc["signature"] = {"algorithm": "ed25519", "file": SIGNATURE,
                            "public_key": public_pem(public_key)}
    return doc


def write(root: Path, run: Mapping[str, Any], *, signing_key: Ed25519PrivateKey | None = None,
          exclude_dirs: Sequence[str] = ()) -> Path:
    """Write ``evidence-manifest.json`` (and its signature when a key is given) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    sig_path = root / SIGNATURE
    sig_path.unlink(missing_ok=True)
    doc = build(root, run, public_key=signing_key.public_key() if signing_key else None,
                exclude_dirs=exclude_dirs)
    body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    path = root / MANIFEST
    path.write_bytes(body)
    if signing_key is not None:
        sig_path.write_text(base64.b64encode(signing_key.sign(body)).decode() + "\n")
    return path


@dataclasses.dataclass
class Verification:
    """The outcome of verifying a reports directory against its manifest."""

    root: Path
    changed: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    added: list[str] = dataclasses.field(default_factory=list)
    signature: str = "absent"  # absent | valid | invalid | untrusted-key
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        """True when every file matches and the signature (if any or required) is valid."""
        return not (self.changed or self.missing or self.added or self.problems
                    or self.signature in ("invalid", "untrusted-key"))

    def lines(self) -> list[str]:
        """A human-readable report, one finding per line."""
        out = [f"changed: {p}" for p in self.changed]
        out += [f"missing: {p}" for p in self.missing]
        out += [f"added: {p}" for p in self.added]
        out += [f"error: {p}" for p in self.problems]
        out += [f"note: {n}" for n in self.notes]
        verdict = "OK" if self.ok else "FAILED"
        out.append(f"{verdict}: {self.checked} files checked, {len(self.changed)} changed, "
                   f"{len(self.missing)} missing, {len(self.added)} added; signature "
                   f"{self.signature}")
        return out


def verify(root: Path, *, public_key: Ed25519PublicKey | None = None) -> Verification:
    """Verify the manifest in ``root``: every file's hash, the file set, and the signature.

    With ``public_key`` (trusted, given by the auditor) a valid signature by that key is
    required. Without it, a signature is checked against the key the manifest names, which
    proves integrity but not who signed.
    """
    result = Verification(root)
    path = root / MANIFEST
    try:
        body = path.read_bytes()
        doc = json.loads(body)
    except FileNotFoundError:
        result.problems.append(f"no {MANIFEST} in {root}")
        return result
    except ValueError as exc:
        result.problems.append(f"{MANIFEST} is not valid JSON: {exc}")
        return result
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        result.problems.append(f"{MANIFEST} is not a {FORMAT} document")
        return result
    _check_signature(root, body, doc, public_key, result)
    listed: Mapping[str, Any] = doc.get("files", {})
    excluded = [str(d) for d in doc.get("excluded_dirs", []) if "/" not in str(d)]
    actual = {p.relative_to(root).as_posix(): p for p in evidence_files(root, excluded)}
    for rel, meta in sorted(listed.items()):
        current = actual.get(rel)
        if current is None:
            result.missing.append(rel)
        elif sha256(current) != meta.get("sha256"):
            result.changed.append(rel)
    result.added = sorted(set(actual) - set(listed))
    result.checked = len(listed)
    return result


def _check_signature(root: Path, body: bytes, doc: Mapping[str, Any],
                     trusted: Ed25519PublicKey | None, result: Verification) -> None:
    sig_path = root / SIGNATURE
    declared = doc.get("signature")
    if not sig_path.exists():
        if declared:
            result.problems.append(f"the manifest names a signature but {SIGNATURE} is missing")
            result.signature = "invalid"
        elif trusted is not None:
            result.problems.append(f"a public key was given but the evidence is not signed "
                                   f"(no {SIGNATURE})")
        return
    try:
        signature = base64.b64decode(sig_path.read_text().strip(), validate=True)
    except ValueError:
        result.signature = "invalid"
        result.problems.append(f"{SIGNATURE} is not base64")
        return
    key = trusted
    if key is None:
        if not declared or "public_key" not in declared:
            result.signature = "invalid"
            result.problems.append("a signature exists but the manifest names no public key")
            return
        try:
            loaded = serialization.load_pem_public_key(str(declared["public_key"]).encode())
        except ValueError:
            result.signature = "invalid"
            result.problems.append("the manifest's public key is not a PEM public key")
            return
        if not isinstance(loaded, Ed25519PublicKey):
            result.signature = "invalid"
            result.problems.append("the manifest's public key is not an Ed25519 key")
            return
        key = loaded
        result.notes.append("signature checked against the key named in the manifest; pass "
                            "--public-key to prove who signed")
    try:
        key.verify(signature, body)
    except InvalidSignature:
        result.signature = "invalid"
        result.problems.append("the signature does not match the manifest"
                               + (" and the given public key" if trusted else ""))
        return
    result.signature = "valid"
    if trusted is not None and declared and declared.get("public_key") != public_pem(trusted):
        result.notes.append("the manifest names a different public key than the one given; the "
                            "signature is valid for the given key")
