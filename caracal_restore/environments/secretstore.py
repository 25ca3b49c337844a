"""Secret stores the runtime secrets are restored into: a Compose-style directory (one file per
secret, as Caracal's ``infra/secrets`` writes them), an env file, or AWS Secrets Manager.

Values are bytes-exact (Caracal writes hex with no trailing newline). Every value read or
written is registered with the redactor so it never reaches evidence.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from caracal_restore.errors import EnvironmentNotReady
from caracal_restore.redact import REDACTOR

PROVIDERS = ("dir", "env", "aws-secretsmanager")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SecretStore(Protocol):
    """Read and write named secrets."""

    provider: str

    def names(self) -> list[str]: ...
    def read(self, name: str) -> str: ...
    def write(self, name: str, value: str) -> None: ...


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a secret name: {name!r}")
    return name


class DirSecretStore:
    """One file per secret, mode 0444 in a 0700 directory, no trailing newline."""

    provider = "dir"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def __repr__(self) -> str:
        return f"DirSecretStore({self.root})"

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and _NAME.match(p.name))

    def read(self, name: str) -> str:
        path = self.root / _check_name(name)
        try:
            value = path.read_text()
        except FileNotFoundError:
            raise KeyError(name) from None
        # Caracal's loaders trim trailing space/tab/CR/LF; so do we.
        value = value.rstrip(" \t\r\n")
        REDACTOR.add(value)
        return value

    def write(self, name: str, value: str) -> None:
        REDACTOR.add(value)
        path = self.root / _check_name(name)
        if path.exists():
            path.chmod(0o600)
        path.write_text(value)
        path.chmod(0o444)


class EnvFileSecretStore:
    """``NAME=value`` lines in one file (values are hex or URLs: no quoting needed)."""

    provider = "env"

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            path.chmod(0o600)

    def __repr__(self) -> str:
        return f"EnvFileSecretStore({self.path})"

    def _load(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for line in self.path.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            values[key.strip()] = value
        return values

    def names(self) -> list[str]:
        return sorted(self._load())

    def read(self, name: str) -> str:
        value = self._load()[_check_name(name)]
        REDACTOR.add(value)
        return value

    def write(self, name: str, value: str) -> None:
        REDACTOR.add(value)
        if "\n" in value:
            raise ValueError(f"secret {name} holds a newline; an env file cannot store it")
        values = self._load()
        values[_check_name(name)] = value
        self.path.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
        self.path.chmod(0o600)


class AwsSecretsManagerStore:
    """Secrets under a name prefix in AWS Secrets Manager (or a compatible endpoint)."""

    provider = "aws-secretsmanager"

    def __init__(self, prefix: str, *, endpoint_url: str | None = None,
                 region: str = "us-east-1", client: Any = None) -> None:
        import boto3

        self.prefix = prefix.rstrip("/") + "/"
        self._client = client or boto3.client(
            "secretsmanager", endpoint_url=endpoint_url, region_name=region
        )

    def __repr__(self) -> str:
        return f"AwsSecretsManagerStore({self.prefix})"

    def names(self) -> list[str]:
        paginator = self._client.get_paginator("list_secrets")
        names = []
        for page in paginator.paginate(
            Filters=[{"Key": "name", "Values": [self.prefix]}]
        ):
            for entry in page.get("SecretList", []):
                if entry["Name"].startswith(self.prefix):
                    names.append(entry["Name"][len(self.prefix):])
        return sorted(names)

    def read(self, name: str) -> str:
        from botocore.exceptions import ClientError

        try:
            value = self._client.get_secret_value(SecretId=self.prefix + _check_name(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise KeyError(name) from None
            raise
        text = str(value["SecretString"])
        REDACTOR.add(text)
        return text

    def write(self, name: str, value: str) -> None:
        from botocore.exceptions import ClientError

        REDACTOR.add(value)
        secret_id = self.prefix + _check_name(name)
        try:
            self._client.create_secret(Name=secret_id, SecretString=value)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
                raise
            self._client.put_secret_value(SecretId=secret_id, SecretString=value)


def copy_all(source: SecretStore, target: SecretStore) -> list[str]:
    """Copy every secret from one store to another; returns the names copied."""
    names = source.names()
    for name in names:
        target.write(name, source.read(name))
    return names


def write_all(target: SecretStore, values: Mapping[str, str]) -> None:
    """Write a mapping of secrets."""
    for name, value in values.items():
        target.write(name, value)


@contextlib.contextmanager
def provide(
    provider: str,
    *,
    workdir: Path | None = None,
    keep: bool = False,
    aws_prefix: str | None = None,
    endpoint_url: str | None = None,
) -> Iterator[SecretStore]:
    """A fresh, empty secret store of the named kind (the restore target for secrets)."""
    if provider in {"dir", "env"}:
        root = Path(tempfile.mkdtemp(prefix="caracal-secrets-", dir=workdir))
        try:
            if provider == "dir":
                yield DirSecretStore(root / "secrets")
            else:
                yield EnvFileSecretStore(root / "secrets.env")
        finally:
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
    elif provider == "aws-secretsmanager":
        if not aws_prefix:
            raise EnvironmentNotReady(
                "--secret-store-provider aws-secretsmanager needs --secret-store-prefix"
            )
        yield AwsSecretsManagerStore(aws_prefix, endpoint_url=endpoint_url)
    else:
        raise EnvironmentNotReady(f"unknown secret store provider {provider!r}; use {PROVIDERS}")
