from collections import Counter

from lb_core.balancer import distance_km, load, place, predicted_load
from lb_core.config_sections import BalancerConfig, MonitorConfig, ServerConfig
from lb_core.pool import DisableState, MeetingLoad, Pool, Status

BALANCER = BalancerConfig()
MONITOR = MonitorConfig()


def pool_of(n: int, **overrides) -> Pool:  # type: ignore[no-untyped-def]
    pool = Pool([ServerConfig(name=f"s{i}", url=f"http://10.0.0.{i}/bigbluebutton/", secret="x", **overrides)
                 for i in range(1, n + 1)])
    for server in pool:
        server.status = Status.UP
    return pool


def test_a_burst_of_creates_spreads_evenly():
    pool = pool_of(5)
    chosen = Counter()
    for i in range(200):
        server = place(pool, BALANCER, 1000.0).order[0]
        server.note_create(f"m{i}", 1000.0)
        chosen[server.name] += 1
    assert set(chosen.values()) == {40}


def test_weights_are_honoured():
    pool = pool_of(3)
    pool.update_config("s1", weight=2.0)
    chosen = Counter()
    for i in range(400):
        server = place(pool, BALANCER, 1000.0).order[0]
        server.note_create(f"m{i}", 1000.0)
        chosen[server.name] += 1
    assert chosen["s1"] == 200 and chosen["s2"] == chosen["s3"] == 100


def test_real_participants_replace_the_prediction():
    pool = pool_of(2)
    s1, s2 = pool.get("s1"), pool.get("s2")
    s1.note_create("big", 1000.0)
    assert load(s1, BALANCER, 1000.0) == 1 + 15  # one meeting plus its expected size
    s1.record_poll_success({"big": MeetingLoad(participants=40, voice=10, video=4)}, MONITOR, 1001.0, BALANCER)
    assert load(s1, BALANCER, 1001.0) == 1 + 40 + 5 + 4
    assert place(pool, BALANCER, 1001.0).order[0] is s2
    # The expectation fades out over the warm-up time.
    s2.note_create("new", 1001.0)
    assert predicted_load(s2, BALANCER, 1001.0 + 450) == 7.5
    assert predicted_load(s2, BALANCER, 1001.0 + 900) == 0


def test_exclusions_and_reasons():
    pool = pool_of(4, max_meetings=1)
    pool.get("s1").draining = True
    pool.get("s2").status = Status.DOWN
    pool.get("s3").disable_state = DisableState.DISABLED
    pool.get("s4").note_create("m", 0)
    placement = place(pool, BALANCER, 1.0)
    assert placement.order == []
    reasons = {c["server"]: c["excluded"] for c in placement.scores}
    assert reasons == {"s1": "draining", "s2": "status down", "s3": "disabled", "s4": "at its meeting limit (1)"}
    pool.get("s3").disable_state = DisableState.ENABLED
    assert [s.name for s in place(pool, BALANCER, 1.0).order] == ["s3"]


def test_preferred_server_and_geolocation():
    pool = pool_of(3)
    locations = {"s1": (-30.03, -51.2), "s2": (52.52, 13.40), "s3": (50.11, 8.68)}
    for name, (lat, lon) in locations.items():
        pool.get(name).geoloc = {"latitude": str(lat), "longitude": str(lon)}
    pool.get("s2").note_create("busy", 0.0)
    near_berlin = place(pool, BALANCER, 1.0, requester=(52.39, 13.06), nearby_km=500)
    assert [s.name for s in near_berlin.order] == ["s3", "s2", "s1"]  # both German servers first, by load
    near_berlin_tight = place(pool, BALANCER, 1.0, requester=(52.39, 13.06), nearby_km=100)
    assert near_berlin_tight.order[0].name == "s2"
    preferred = place(pool, BALANCER, 1.0, preferred="10.0.0.1")
    assert preferred.order[0].name == "s1" and "preferredServer" in preferred.reason
    ignored = place(pool, BALANCER, 1.0, preferred="nope")
    assert "ignored" in ignored.reason
    assert round(distance_km((52.52, 13.40), (50.11, 8.68))) == 423


def test_status_hysteresis():
    pool = pool_of(1)
    server = pool.get("s1")
    server.record_poll_failure("refused", True, MONITOR)
    assert server.status == Status.UP
    server.record_poll_failure("refused", True, MONITOR)
    assert server.status == Status.UNREACHABLE and server.is_disabled
    server.record_poll_success({}, MONITOR, 0.0, BALANCER)
    assert server.status == Status.UNREACHABLE
    server.record_poll_success({}, MONITOR, 0.0, BALANCER)
    assert server.status == Status.UP and not server.is_disabled
