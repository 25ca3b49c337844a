"""Command line: ``python -m caracal_restore.evidence {verify,newest-bundle,report,keygen}``.

- ``verify DIR [--public-key PEM]``: check the evidence manifest and its signature; list every
  changed, missing or added file (exit 0 when everything matches, 1 otherwise).
- ``newest-bundle LOCATION [--endpoint-url URL]``: print the newest ``caracalBackup-*`` bundle
  of a directory or ``s3://bucket/prefix`` (for scheduled restore validation).
- ``report [--results DIR] [--output DIR] [--history FILE]``: render the HTML report with
  Allure 3 (says so and exits 0 when Node.js is missing).
- ``keygen KEY.pem [--public PUB.pem]``: create an Ed25519 signing key (mode 0600).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from caracal_restore.evidence import manifest, report


def _verify(args: argparse.Namespace) -> int:
    root = Path(args.directory)
    try:
        key = manifest.load_public_key(Path(args.public_key)) if args.public_key else None
    except manifest.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = manifest.verify(root, public_key=key)
    for line in result.lines():
        print(line)
    return 0 if result.ok else 1


def _newest(args: argparse.Namespace) -> int:
    from caracal_restore.bundle import list_bundles
    from caracal_restore.errors import BundleError

    location = str(args.location)
    try:
        found = list_bundles(location, endpoint_url=args.endpoint_url)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(f"error: no caracalBackup-*.tar.gz[.age] bundle in {location}", file=sys.stderr)
        return 1
    name, _created = found[0]
    if location.startswith("s3://"):
        print(location.rstrip("/") + "/" + name)
    else:
        print(Path(location) / name)
    return 0


def _report(args: argparse.Namespace) -> int:
    reports = Path(args.reports_dir)
    return report.render(
        Path(args.results) if args.results else reports / "allure-results",
        Path(args.output) if args.output else reports / "html",
        history=Path(args.history), package=args.package, name=args.name,
        template=Path(args.config) if args.config else None,
    )


def _keygen(args: argparse.Namespace) -> int:
    key = Ed25519PrivateKey.generate()
    path = Path(args.key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"error: {path} exists; not overwriting a key", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = manifest.public_pem(key.public_key())
    if args.public:
        Path(args.public).write_text(public)
    print(f"private key: {path} (keep it in the CI's secret store)")
    print(public, end="")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    main = argparse.ArgumentParser(prog="python -m caracal_restore.evidence",
                                   description="Evidence tools of caracal-restore.")
    sub = main.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify the evidence manifest and its signature")
    verify.add_argument("directory", help="the reports directory (e.g. reports/out)")
    verify.add_argument("--public-key", help="trusted Ed25519 public key (PEM) that must have "
                        "signed the manifest")
    verify.set_defaults(func=_verify)
    newest = sub.add_parser("newest-bundle", help="print the newest bundle of a location")
    newest.add_argument("location", help="directory or s3://bucket/prefix")
    newest.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"),
                        help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    newest.set_defaults(func=_newest)
    rep = sub.add_parser("report", help="render the HTML report with Allure 3 (needs Node >= 20)")
    rep.add_argument("--reports-dir", default="reports/out",
                     help="reports directory (default reports/out)")
    rep.add_argument("--results", help="Allure results (default <reports-dir>/allure-results)")
    rep.add_argument("--output", help="HTML output (default <reports-dir>/html)")
    rep.add_argument("--history", default="reports/history/history.jsonl",
                     help="history file carried between runs (default "
                     "reports/history/history.jsonl)")
    rep.add_argument("--config", help="Allure 3 config template (default reports/allurerc.json)")
    rep.add_argument("--name", help="report name")
    rep.add_argument("--package", default=os.environ.get("CARACAL_RESTORE_ALLURE_PACKAGE",
                                                         report.ALLURE_PACKAGE),
                     help=f"npm package of the Allure 3 CLI (default {report.ALLURE_PACKAGE})")
    rep.set_defaults(func=_report)
    keygen = sub.add_parser("keygen", help="create an Ed25519 signing key (PEM)")
    keygen.add_argument("key", help="where to write the private key (mode 0600)")
    keygen.add_argument("--public", help="also write the public key here")
    keygen.set_defaults(func=_keygen)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
