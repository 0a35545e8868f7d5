"""GET /health: 200 with the configured services while the data folder and the store work, else 503 with a reason.

The tests run as root, so file modes cannot make the data folder unwritable;
they swap a folder for a plain file instead, which no one can write into.
"""

from __future__ import annotations

from tests.gatewayproc import session_from


def test_health_is_ok_and_says_which_services_are_configured(make_gateway):
    gateway = make_gateway(env={"MULTIMSG_WPP1_TOKEN": ""})  # WhatsApp without its token
    response = gateway.http.get(gateway.url + "/health")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    report = response.json()
    assert report["status"] == "ok"
    assert report["services"] == {"outbox": True, "telegram": True, "wpp1": False}  # the outbox needs no account
    assert report["configured"] == ["outbox", "telegram"]
    assert report["kinds"] == {"outbox": "outbox", "telegram": "telegram", "wpp1": "whatsapp"}
    # Not an operator endpoint: a load balancer elsewhere may ask.
    assert session_from("127.0.0.2").get(gateway.url + "/health").status_code == 200
    assert gateway.http.post(gateway.url + "/health").status_code == 405


def test_health_is_503_while_the_data_folder_is_not_writable_and_recovers(gateway):
    home, moved = gateway.home, gateway.home.with_name("moved-away")
    home.rename(moved)
    home.write_text("not a folder")
    try:
        response = gateway.http.get(gateway.url + "/health", headers={"Accept": "application/json"})
        assert response.status_code == 503
        assert response.json() == {"error": "the data folder is not writable (Not a directory)"}
        assert str(home) not in response.text  # the path goes to the log, not to the caller
        plain = gateway.http.get(gateway.url + "/health")
        assert plain.status_code == 503 and plain.text == "the data folder is not writable (Not a directory)"
    finally:
        home.unlink()
        moved.rename(home)
    assert gateway.http.get(gateway.url + "/health").status_code == 200


def test_health_is_503_when_the_store_cannot_be_read(gateway):
    store, moved = gateway.home / "store", gateway.home / "store-moved"
    store.rename(moved)
    store.write_text("not a folder")
    try:
        response = gateway.http.get(gateway.url + "/health")
        assert response.status_code == 503
        assert response.text.startswith("the store is not readable")
    finally:
        store.unlink()
        moved.rename(store)
    assert gateway.http.get(gateway.url + "/health").status_code == 200


def test_a_passed_check_is_reused_for_a_few_seconds_so_the_probe_is_written_rarely(tmp_path, monkeypatch):
    from multimsg import config, gateway, health

    monkeypatch.setenv("MULTIMSG_HOME", str(tmp_path / "home"))
    config.settings.cache_clear()
    gateway.gateway.cache_clear()
    writes, now = [], [1000.0]
    real_write = health.write_atomic
    monkeypatch.setattr(health, "write_atomic", lambda path, data, **kw: (writes.append(path), real_write(path, data, **kw)))
    monkeypatch.setattr(health, "_clock", lambda: now[0])
    monkeypatch.setattr(health, "_passed", None)
    try:
        reports = [health.check() for _ in range(50)]
        assert len(writes) == 1 and all(r["status"] == "ok" for r in reports)
        now[0] += health.CACHE_SECONDS + 0.1
        health.check()
        assert len(writes) == 2
        # A failure is not remembered: the next call probes again, and recovers at once.
        now[0] += health.CACHE_SECONDS + 0.1
        monkeypatch.setattr(health, "write_atomic", lambda path, data, **kw: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        for _ in range(2):
            try:
                health.check()
                raise AssertionError("a failing probe passed")
            except health.Unavailable as exc:
                assert "No space left" in exc.reason
        monkeypatch.setattr(health, "write_atomic", lambda path, data, **kw: (writes.append(path), real_write(path, data, **kw)))
        assert health.check()["status"] == "ok" and len(writes) == 3
    finally:
        config.settings.cache_clear()
        gateway.gateway.cache_clear()
