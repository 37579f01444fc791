"""Position: the NMEA driver against the emulator over a pty, the gpsd client against a small
gpsd speaking its JSON protocol on loopback, stale fixes, the assigned area, and the position
sealed into registration manifests by the real agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.position.config import AreaConfig, PositionConfig
from agent.position.service import AreaGate, PositionService, distance_m
from drivers.gnss import GpsdClient, NmeaReceiver
from tests.emulators.gpsd import FakeGpsd
from tests.emulators.nmea import NmeaEmulator, Sky, epoch, sentence
from tests.support.refusals import check_texts
from tests.support.waiting import wait_until

NAIROBI = (-1.2921, 36.8219)
MOMBASA = (-4.0435, 39.6682)


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


# --- the driver ------------------------------------------------------------------------------


def test_the_driver_follows_the_emulator_through_fixes_gaps_jumps_and_garbage() -> None:
    with NmeaEmulator() as gps:
        receiver = NmeaReceiver(gps.path)
        receiver.start()
        try:
            status = receiver.status
            wait_until(lambda: status.connected and status.sentences >= 8, what="sentences read")
            assert status.fix is None and status.fix_type == "none", "no fix yet"
            gps.fix(*NAIROBI, satellites=11, hdop=0.8)
            wait_until(lambda: status.fix is not None, what="a fix")
            fix = status.fix
            assert fix is not None and fix.lat == pytest.approx(NAIROBI[0], abs=1e-5)
            assert fix.lon == pytest.approx(NAIROBI[1], abs=1e-5)
            assert (fix.quality, fix.satellites, fix.hdop, fix.accuracy_m) == (1, 11, 0.8, 4.0)
            assert status.fix_type == "3d" and status.satellites_in_view == 4
            assert fix.fix_time >= Sky().utc.timestamp()
            # Garbage, a bad checksum, an over-long line: counted, the fix unharmed.
            bad_before = status.bad_sentences
            gps.send_raw(b"\x00\xff$GPGGA,garbage\r\n")
            good = sentence("GPGGA,120000.00,0116.5260,S,03649.3140,E,1,09,0.9,1620.0,M,-20.1,M,,")
            gps.send_raw(good[:-5] + b"00\r\n")  # the right sentence with a wrong checksum
            gps.send_raw(b"$" + b"A" * 2000 + b"\r\n")
            gps.send_raw(good.split(b"*")[0] + b"\r\n")  # no checksum at all: refused too
            wait_until(lambda: status.bad_sentences >= bad_before + 4, what="bad sentences counted")
            time_for_more = status.sentences
            wait_until(lambda: status.sentences >= time_for_more + 8, what="two more epochs")
            assert status.bad_sentences == bad_before + 4, "each bad line counted once"
            assert status.fix is not None
            # A jump: the latest fix wins.
            gps.fix(*MOMBASA)
            wait_until(lambda: status.fix is not None and status.fix.lat < -4, what="the jump")
            # The sky closes: the fix is gone at once, not kept as current.
            gps.no_fix()
            wait_until(lambda: status.fix is None and status.fix_type == "none", what="fix lost")
            seen = status.sentences
            wait_until(lambda: status.sentences >= seen + 8, what="two more epochs")
            assert status.fix is None, "and stays lost"
        finally:
            receiver.stop()


def test_a_fix_needs_its_date_and_a_valid_quality() -> None:
    mono = Mono()
    receiver = NmeaReceiver("unused", monotonic=mono)
    sky = Sky(*NAIROBI, fix=True)
    gga, gsa, gsv, rmc = lines(epoch(sky))
    receiver.state.feed(gga)
    assert receiver.status.fix is None, "no RMC yet: no date to stand behind"
    receiver.state.feed(rmc)
    assert receiver.status.fix is not None, "the epoch's two halves"
    # Midnight: a GGA of the new day with the old day's RMC must not make a fix a day off.
    receiver.state.feed(lines(epoch(Sky(*NAIROBI, fix=True, utc=Sky().utc.replace(hour=0))))[0])
    assert receiver.status.fix.fix_time == Sky().utc.timestamp(), "kept the last paired fix"
    # A "no fix" GGA with a wrong checksum, or with none: refused, the fix stays.
    no_fix = lines(epoch(Sky(fix=False)))[0]
    bad = receiver.status.bad_sentences
    receiver.state.feed(no_fix[:-2] + ("00" if no_fix[-2:] != "00" else "11"))
    receiver.state.feed(no_fix.split("*")[0])
    assert receiver.status.fix is not None and receiver.status.bad_sentences == bad + 2
    # A checksum-valid sentence with nonsense in it.
    receiver.state.feed(sentence("GPGGA,120000.00,9999.0000,S,03649.3140,E,1,xx,zz,1620.0,M,,M,,").decode())
    assert receiver.status.bad_sentences >= 1
    # Quality 0 (no fix) in GGA clears it.
    receiver.state.feed(lines(epoch(Sky(fix=False)))[0])
    assert receiver.status.fix is None


def test_a_stale_fix_is_never_recorded_as_current() -> None:
    mono = Mono()
    receiver = NmeaReceiver("unused", monotonic=mono)
    receiver.status.connected = True
    service = PositionService(PositionConfig(source="nmea", port="x", max_age_s=10), monotonic=mono,
                              reader=receiver)
    assert service.manifest() == {"fix": False, "source": "nmea", "reason": "the GNSS receiver has no fix"}
    for line in lines(epoch(Sky(*NAIROBI, fix=True))):
        receiver.state.feed(line)
    current = service.manifest()
    assert current["fix"] is True and current["lat"] == pytest.approx(NAIROBI[0])
    assert current["source"] == "nmea"
    assert current["fix_time"] == "2026-11-28T12:00:00.000Z" and current["accuracy_m"] == 4.5
    assert service.gnss_time() == (Sky().utc.timestamp(), 100.0)
    mono.now += 11  # the receiver went quiet (cable pulled) with its last fix in memory
    stale = service.manifest()
    assert stale["fix"] is False and "11 s old" in stale["reason"] and "lat" not in stale
    assert service.gnss_time() is None, "nor is a stale fix used to judge the clock"


def test_the_area_flags_or_refuses() -> None:
    mono = Mono()
    receiver = NmeaReceiver("unused", monotonic=mono)
    receiver.status.connected = True
    area = AreaConfig(lat=NAIROBI[0], lon=NAIROBI[1], radius_m=5000, outside="flag")
    service = PositionService(PositionConfig(source="nmea", port="x", area=area), monotonic=mono,
                              reader=receiver)
    gate = AreaGate(service)
    assert gate.check() is None, "no fix: nothing to refuse"
    for line in lines(epoch(Sky(*MOMBASA, fix=True))):
        receiver.state.feed(line)
    flagged = service.manifest()
    assert flagged["outside_area"] is True and flagged["area_distance_m"] == pytest.approx(
        distance_m(*NAIROBI, *MOMBASA), abs=1)
    assert gate.check() is None, "flag: taken, and marked"
    service.config = service.config.model_copy(update={"area": area.model_copy(update={"outside": "refuse"})})
    refusal = gate.check()
    assert refusal is not None and refusal.rule == "outside_area" and "km from the centre" in refusal.message
    assert "کلومیٹر" in check_texts(refusal)  # the console's catalogues read it the same, and in Urdu
    assert 430 < distance_m(*NAIROBI, *MOMBASA) / 1000 < 450  # the haversine itself, ~440 km


# --- gpsd ------------------------------------------------------------------------------------


def test_the_gpsd_client_reads_fixes_and_their_loss() -> None:
    tpv = {"class": "TPV", "device": "/dev/ttyACM0", "mode": 3, "time": "2026-11-28T12:00:01.000Z",
           "lat": NAIROBI[0], "lon": NAIROBI[1], "eph": 3.2, "epx": 2.0, "epy": 2.5}
    sky = {"class": "SKY", "hdop": 0.7, "satellites": [{"PRN": n, "used": n < 9} for n in range(1, 13)]}
    lost = {"class": "TPV", "mode": 1, "time": "2026-11-28T12:00:05.000Z"}
    with FakeGpsd([{"class": "DEVICES", "devices": []}, b"not json\n", tpv, sky]) as gpsd:
        client = GpsdClient("127.0.0.1", gpsd.port)
        client.start()
        try:
            wait_until(lambda: client.status.fix is not None and client.status.fix.satellites == 8,
                       what="a fix with its satellites")
            fix = client.status.fix
            assert fix is not None and fix.source == "gpsd" and fix.accuracy_m == 3.2 and fix.hdop == 0.7
            assert client.status.satellites_in_view == 12 and client.status.bad_sentences == 1
            assert gpsd.watch.startswith(b'?WATCH={"enable":true,"json":true}')
        finally:
            client.stop()
    client = GpsdClient("127.0.0.1", 1)
    client.feed(json.dumps(tpv).encode())
    assert client.status.fix is not None
    client.feed(json.dumps(lost).encode())
    assert client.status.fix is None and client.status.fix_type == "none"


# --- the agent -------------------------------------------------------------------------------


def queued_manifests(queue_path: Path, keys: Path, session_ids: list[str]) -> list[dict]:
    """The sealed manifests of ``session_ids`` in a stopped agent's queue, opened as the
    central side would open them."""
    from agent.security.keys import load_decryption_key, load_kiosk_keys
    from agent.security.sealing import Opener
    from agent.transport.durable_queue import DurableQueue

    queue = DurableQueue(queue_path, max_bytes=1 << 30, min_free_bytes=0)
    opener = Opener(load_decryption_key(keys / "central.key"), load_kiosk_keys(keys / "kiosks"))
    try:
        return [json.loads(opener.open(queue.get(sid).payload)[1]) for sid in session_ids]  # type: ignore[union-attr]
    finally:
        queue.close()


@pytest.fixture
def gps() -> Iterator[NmeaEmulator]:
    with NmeaEmulator() as emulator:
        yield emulator


def test_registrations_carry_the_position_sealed_and_the_area_is_enforced(tmp_path: Path,
                                                                          gps: NmeaEmulator) -> None:
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from devtools.broker import free_port
    from tests.support.local_api import Api
    from tests.vans.van import KIOSK, kiosk_raw

    provision(tmp_path / "keys", KIOSK)
    raw = kiosk_raw(tmp_path, free_port())
    raw["position"] = {"source": "nmea", "port": gps.path, "max_age_s": 5,
                       "area": {"lat": NAIROBI[0], "lon": NAIROBI[1], "radius_m": 5000, "outside": "refuse"}}
    config = validate_config(raw, "van")
    agent = Agent(config)
    agent.start()
    sessions = []
    try:
        api = Api.for_agent(agent)
        position = agent.position
        assert position is not None
        wait_until(lambda: position.status.connected and position.status.sentences > 0, what="receiver read")

        def register() -> tuple[int, dict]:
            status, body = api.call("POST", "/v1/sessions", {"applicant_ref": "APP-1", "operator_id": "op-1"})
            if status == 201:
                sessions.append(body["id"])
                api.ok("POST", f"/v1/sessions/{body['id']}/cancel", {"reason": "test"})
            return status, body

        assert register()[0] == 201, "no fix: registrations go on, the manifest says so"
        gps.fix(*MOMBASA)
        wait_until(lambda: position.current()[0] is not None, what="fix far away")
        status, body = register()
        assert status == 409 and [r["rule"] for r in body["error"]["rules"]] == ["outside_area"]
        gps.fix(NAIROBI[0] + 0.01, NAIROBI[1])  # ~1.1 km north of the centre
        wait_until(lambda: position.current()[0] is not None and position.current()[0].lat > -1.29,
                   what="fix inside")
        assert register()[0] == 201
        from agent.transport.telemetry import snapshot

        telemetry = snapshot(agent)  # type: ignore[arg-type]
        assert telemetry["position"]["fix"]["lat"] == pytest.approx(NAIROBI[0] + 0.01, abs=1e-5)
        clock = agent.clock.state(fresh=True)
        assert clock.source == "gnss" and not clock.wrong and abs(clock.gnss_offset_s) < 5
    finally:
        agent.stop()
    manifests = queued_manifests(config.queue.path, tmp_path / "keys", sessions)
    first, second = (m["position"] for m in manifests)
    assert first == {"fix": False, "source": "nmea", "reason": "the GNSS receiver has no fix"}
    assert second["fix"] is True and second["outside_area"] is False
    assert 1000 < second["area_distance_m"] < 1200
    assert second["source"] == "nmea" and second["fix_time"][:10] == datetime.now(UTC).date().isoformat()


def test_devices_shows_the_receiver_and_its_fix(tmp_path: Path, gps: NmeaEmulator,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from tests.support.config import to_toml

    config = tmp_path / "agent.toml"
    config.write_text(to_toml({"kiosk": {"id": "van-07"}, "mqtt": {"allow_plaintext": True},
                               "queue": {"path": str(tmp_path / "q.db")},
                               "position": {"source": "nmea", "port": gps.path}}))
    assert main(["devices", "--config", str(config)]) == 0
    assert "no fix (the GNSS receiver has no fix)" in capsys.readouterr().out
    gps.fix(*NAIROBI, satellites=7)
    assert main(["devices", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["position"]
    assert shown["fix"]["satellites"] == 7 and shown["current"]["lat"] == pytest.approx(NAIROBI[0], abs=1e-5)


def test_flag_mode_warns_the_officer_while_the_person_is_there(tmp_path: Path, gps: NmeaEmulator) -> None:
    """``outside = "flag"``: the registration goes on, and the officer sees why it will be
    flagged (the session view and its events), with the distance and what to do."""
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from devtools.broker import free_port
    from tests.support.local_api import Api
    from tests.vans.van import KIOSK, kiosk_raw

    provision(tmp_path / "keys", KIOSK)
    raw = kiosk_raw(tmp_path, free_port())
    raw["position"] = {"source": "nmea", "port": gps.path,
                       "area": {"lat": NAIROBI[0], "lon": NAIROBI[1], "radius_m": 5000, "outside": "flag"}}
    agent = Agent(validate_config(raw, "van"))
    agent.start()
    try:
        api = Api.for_agent(agent)
        position = agent.position
        assert position is not None
        gps.fix(*MOMBASA)
        wait_until(lambda: position.current()[0] is not None, what="a fix far outside the area")
        session = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-1", "operator_id": "op-1"})
        sid = session["id"]
        (warning,) = session["warnings"]
        far = distance_m(*NAIROBI, *MOMBASA)
        assert warning["rule"] == "outside_area" and warning["distance_m"] == pytest.approx(far, abs=50)
        assert f"{far / 1000:.1f} km from the centre of its assigned area (radius 5 km)" in warning["message"]
        assert "marked" in warning["message"] and "position.area" in warning["action"]
        assert api.ok("GET", f"/v1/sessions/{sid}")["warnings"] == [warning]
        events = api.ok("GET", f"/v1/sessions/{sid}/events?after=0")
        (event,) = [e for e in events["events"] if e["event"] == "warning"]
        assert event["rule"] == "outside_area" and event["distance_m"] == pytest.approx(far, abs=50)
        assert event["action"] == warning["action"]
        # Back inside: nothing to warn of any more.
        gps.fix(NAIROBI[0] + 0.01, NAIROBI[1])
        wait_until(lambda: position.current()[0] is not None and position.current()[0].lat > -1.29,
                   what="a fix inside")
        assert api.ok("GET", f"/v1/sessions/{sid}")["warnings"] == []
        cancelled = api.ok("POST", f"/v1/sessions/{sid}/cancel", {"reason": "test"})
        assert cancelled["warnings"] == []
    finally:
        agent.stop()


def test_the_agent_reads_gpsd_into_the_manifest_and_the_clock(tmp_path: Path) -> None:
    """config/mobile-van.toml's source: gpsd, through the real agent. The manifest carries
    gpsd's fix, and GNSS time decides the clock (source "gnss")."""
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from devtools.broker import free_port
    from tests.support.local_api import Api
    from tests.vans.van import KIOSK, kiosk_raw

    def now_tpv() -> list[dict]:  # gpsd reports the receiver's epoch once a second
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return [{"class": "TPV", "device": "/dev/ttyACM0", "mode": 3, "time": stamp, "lat": MOMBASA[0],
                 "lon": MOMBASA[1], "eph": 4.1},
                {"class": "SKY", "hdop": 0.9,
                 "satellites": [{"PRN": n, "used": n <= 7} for n in range(1, 11)]}]

    provision(tmp_path / "keys", KIOSK)
    raw = kiosk_raw(tmp_path, free_port())
    with FakeGpsd([{"class": "DEVICES", "devices": [{"path": "/dev/ttyACM0"}]}], epoch=now_tpv) as gpsd:
        raw["position"] = {"source": "gpsd", "gpsd_port": gpsd.port, "max_age_s": 10}
        # The default check_interval_s (60 s): the clock was judged at start, before gpsd's
        # first fix; the fix's arrival alone must bring a new judgement.
        config = validate_config(raw, "van")
        agent = Agent(config)
        agent.start()
        try:
            position = agent.position
            assert position is not None
            wait_until(lambda: position.current()[0] is not None and position.current()[0].satellites == 7,
                       what="gpsd's fix with its satellites")
            api = Api.for_agent(agent)
            sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-1", "operator_id": "op-1"})["id"]
            api.ok("POST", f"/v1/sessions/{sid}/cancel", {"reason": "test"})
        finally:
            agent.stop()
        assert gpsd.watch.startswith(b'?WATCH={"enable":true,"json":true}')
    (manifest,) = queued_manifests(config.queue.path, tmp_path / "keys", [sid])
    where, clock = manifest["position"], manifest["clock"]
    assert where["fix"] is True and where["source"] == "gpsd" and where["quality"] == 3
    assert (where["lat"], where["lon"]) == pytest.approx(MOMBASA, abs=1e-6)
    assert where["accuracy_m"] == 4.1 and where["satellites"] == 7 and where["hdop"] == 0.9
    assert clock["source"] == "gnss" and clock["trusted"] is True and clock["wrong"] is False
    assert abs(clock["gnss_offset_s"]) < 5


def test_each_capture_carries_where_and_when_it_was_taken(tmp_path: Path, gps: NmeaEmulator) -> None:
    """A van moves during a session: every capture's manifest entry records the fix (and the
    clock) when that capture was kept, the registration's ``position`` the one at its close."""
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from devtools.broker import free_port
    from tests.support.local_api import Api
    from tests.vans.van import KIOSK, kiosk_raw

    provision(tmp_path / "keys", KIOSK)
    raw = kiosk_raw(tmp_path, free_port())
    raw["position"] = {"source": "nmea", "port": gps.path, "max_age_s": 5}
    config = validate_config(raw, "van")
    agent = Agent(config)
    agent.start()
    try:
        position = agent.position
        assert position is not None
        api = Api.for_agent(agent)

        def fix_at(lat: float) -> None:
            gps.fix(lat, NAIROBI[1])
            wait_until(lambda: position.current()[0] is not None
                       and abs(position.current()[0].lat - lat) < 1e-6, what=f"fix at {lat}")

        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-1", "operator_id": "op-1"})["id"]
        fix_at(NAIROBI[0])
        first = api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"]
        fix_at(NAIROBI[0] + 0.05)  # about 5.6 km further north
        second = api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"]
        gps.no_fix()
        wait_until(lambda: position.current()[0] is None, what="fix lost")
        api.ok("POST", f"/v1/sessions/{sid}/cancel", {"reason": "test"})
    finally:
        agent.stop()
    (manifest,) = queued_manifests(config.queue.path, tmp_path / "keys", [sid])
    taken = {c["id"]: c["taken"] for c in manifest["captures"] if "taken" in c}
    assert set(taken) == {first, second}
    assert taken[first]["position"]["lat"] == pytest.approx(NAIROBI[0], abs=1e-6)
    assert taken[second]["position"]["lat"] == pytest.approx(NAIROBI[0] + 0.05, abs=1e-6)
    assert taken[first]["at"] <= taken[second]["at"] <= manifest["closed_at"]
    assert taken[first]["clock"]["trusted"] in (True, False) and "source" in taken[first]["clock"]
    assert manifest["position"]["fix"] is False, "the registration's own position: at its close"
