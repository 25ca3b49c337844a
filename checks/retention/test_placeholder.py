"""Retention controls (placeholder until the retention rows land): the archive substrate is probed."""

from __future__ import annotations

import dataclasses
import uuid

from caracal_restore.environments.objectstore import ObjectStoreServer
from fixtures import evidence
from fixtures.controls import control


@control("RT-0", feature="Object store substrate", grade="configured")
def test_object_store_round_trip_and_probe(object_store_server: ObjectStoreServer) -> None:
    """RT-0 The object store keeps what is written, and what it enforces is observed, not assumed."""
    store = object_store_server.bucket(f"placeholder-{uuid.uuid4().hex[:8]}", create=True)
    key = "audit/probe.bin"
    written = store.put(key, b"caracal", if_none_match=True)
    second = store.put(key, b"other", if_none_match=True)
    body = store.get(key)
    probe = store.probe_immutability()
    evidence.json("probe", dataclasses.asdict(probe) | {"first_put": written, "second_put": second})
    assert written and body == b"caracal", f"read back {body!r} after writing b'caracal'"
    assert probe.substrate == object_store_server.substrate, (
        f"probe labelled {probe.substrate!r}, store is {object_store_server.substrate!r}"
    )
