"""The backend contract on a real 3-node Redis Cluster (``MULTIMSG_BACKEND=redis+cluster://...``).

Every key of a deployment carries one hash tag and every Lua script gets all its keys in KEYS, so
each operation lands on the one node that owns the tag's slot: no CROSSSLOT error, no MOVED left
unfollowed. A representative subset of the contract suite (records, leases, fencing, atomic
archive, content, several passes at once) runs here on the cluster, each test with its own tag.
"""

from __future__ import annotations

import itertools

import pytest

from tests.redis_cluster_support import redis_cluster  # noqa: F401  (fixture)
from tests.test_backend_contract import (  # noqa: F401  (collected here again, over the cluster)
    test_a_claim_is_a_lease_with_a_unique_token,
    test_a_lapsed_lease_is_taken_back_by_any_pass_and_fences_the_first,
    test_a_message_added_is_read_back_whole,
    test_a_retry_is_not_due_before_its_time,
    test_accept_leaves_a_refused_message_untouched_and_due,
    test_archive_is_atomic_one_of_two_callers_gets_the_message,
    test_content_is_an_object_not_a_path,
    test_figures_follow_every_change_in_the_same_step,
    test_one_pass_delivers_everything_once,
    test_passes_run_together_without_the_lock_deliver_each_message_exactly_once,
    test_report_marks_the_first_report_of_a_final_state_only,
    test_the_sweep_removes_orphan_message_references,
)

_tags = (f"c{n}" for n in itertools.count(1))


@pytest.fixture
def cluster_client(redis_cluster):
    from multimsg.queue.backends.redis import connect

    client = connect(redis_cluster.url)
    yield client
    client.close()


@pytest.fixture
def backend(cluster_client):
    from multimsg.queue.backends.redis import RedisSpool, RedisStore

    tag = next(_tags)  # a deployment of its own on the shared cluster
    return RedisStore(cluster_client, tag), RedisSpool(cluster_client, tag, ttl=3600)


@pytest.fixture
def store(backend):
    return backend[0]


@pytest.fixture
def spool(backend):
    return backend[1]


@pytest.fixture
def any_spool(backend):
    return backend[1]


def test_the_cluster_url_reaches_every_node_and_a_deployment_lives_on_one(cluster_client, redis_cluster, store, spool):
    from tests.test_backend_contract import CLIENT, message

    assert len(cluster_client.get_primaries()) == 3
    m = message()
    store.add(m)
    info = spool.put(CLIENT, [b"x"], "x.txt")
    spool.attach(CLIENT, info.data_id, m.id)
    slots = {cluster_client.keyslot(key) for node in cluster_client.get_primaries()
             for key in cluster_client.keys(f"mm:{{{store.keys.base.split('{')[1].split('}')[0]}}}:*", target_nodes=node)}
    assert len(slots) == 1  # one hash tag: one slot
    assert store.rebuild() == 1 and store.counters.snapshot()["services"]["counting"]["states"]["queued"] == 1
