"""Assets (placeholder until the asset rows land): the isolated Redis is reachable and >= 7."""

from __future__ import annotations

from caracal_restore.environments.redis import RedisServer
from fixtures import evidence
from fixtures.controls import control


@control("AS-0", feature="Isolated Redis", grade="configured")
def test_isolated_redis_answers_with_aof(target_redis: RedisServer) -> None:
    """AS-0 The isolated Redis answers PING, is version 7 or newer and persists with AOF."""
    client = target_redis.client()
    try:
        pong = client.ping()
        info = client.info("server") | client.info("persistence")
    finally:
        client.close()
    observed = {k: info.get(k) for k in ("redis_version", "aof_enabled")}
    evidence.json("redis facts", {"ping": pong, **observed})
    assert pong is True, "the isolated Redis did not answer PING"
    major = int(str(observed["redis_version"]).split(".")[0])
    assert major >= 7, f"Redis {observed['redis_version']}; the target must be Redis >= 7"
    assert observed["aof_enabled"] == 1, "AOF is off; Caracal's Redis runs with appendonly yes"
