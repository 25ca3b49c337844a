"""The SigV4 header of the many-GET client equals botocore's for the same request and time."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from caracal_restore.environments.s3get import ObjectGetter, authorization, signing_key


@pytest.mark.parametrize(("host", "path"), [
    ("127.0.0.1:9000", "/caracal-audit-archive/audit/2026/11/24/2026-11-24T13.parquet"),
    ("minio.local", "/bucket/a%20key%2Bwith/odd~chars"),
])
def test_authorization_equals_botocore(monkeypatch: pytest.MonkeyPatch, host: str,
                                       path: str) -> None:
    when = dt.datetime(2026, 11, 24, 13, 5, 7)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    # botocore told to leave the payload unsigned, as our GETs do (the scheme is not signed).
    request = AWSRequest(method="GET", url=f"https://{host}{path}")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when)
    signer = S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG"), "s3", "eu-west-1")
    signer.add_auth(request)
    ours = authorization("GET", host, path, amz_date, access_key="AKIDEXAMPLE",
                         key=signing_key("wJalrXUtnFEMI/K7MDENG", amz_date[:8], "eu-west-1"),
                         region="eu-west-1")
    assert ours == request.headers["Authorization"]


def test_getter_refuses_a_non_http_endpoint_and_hides_its_secret() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ObjectGetter("ftp://127.0.0.1", "b", access_key="a", secret_key="s")
    getter = ObjectGetter("http://127.0.0.1:9", "b", access_key="a", secret_key="very-secret")
    assert "very-secret" not in repr(getter)
