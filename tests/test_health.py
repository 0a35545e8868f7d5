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
    assert report["services"] == {"telegram": True, "wpp1": False}
    assert report["configured"] == ["telegram"]
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
