"""The service's scheduler: `pipeline.run` at each minute of the service's clock, never twice a minute."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from exfilwatch.config import Home, parse_settings
from exfilwatch.detections.schedule import set_watermark
from exfilwatch.detections.schema import load_detections
from exfilwatch.home import open_state
from exfilwatch.service.server import Service

START = datetime(2026, 9, 25, 14, 0, 30, tzinfo=timezone.utc)


def test_the_scheduler_runs_the_pipeline_once_per_minute_of_its_clock(tmp_path):
    root = tmp_path / "home"
    home = Home(root=root, config_path=root / "config.yaml")
    settings = parse_settings({"service": {"schedule": True}}, "test")
    clock = [START]
    service = Service(home, settings, list(load_detections([]).values()), clock=lambda: clock[0])
    state = open_state(home)
    set_watermark(state, "em_bsum", START.replace(hour=10, minute=5, second=0))
    state.close()

    def last_run() -> float | None:
        return service.metrics.registry.get_sample_value("exfilwatch_detection_last_run_timestamp",
                                                         {"detection": "em_bsum"})

    def lag(detection: str) -> float | None:
        return service.metrics.registry.get_sample_value("exfilwatch_detection_lag_seconds", {"detection": detection})

    async def until(condition, seconds: float = 60) -> None:
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")

    async def main() -> None:
        task = asyncio.create_task(service.serve())
        await until(lambda: last_run() == START.replace(second=0).timestamp())
        # em_bsum fires at minute 5 of each hour: it last ran the 10:05 fire; at 14:00 the scheduler
        # runs the missed 11:05, 12:05 and 13:05 fires, and 13:05 is 55 minutes behind
        assert lag("em_bsum") == 55 * 60
        assert lag("em_fnum") is None  # never run: no lag to tell
        clock[0] = START + timedelta(seconds=20)  # the same minute: no second run
        await asyncio.sleep(0.3)
        assert last_run() == START.replace(second=0).timestamp()
        clock[0] = START + timedelta(seconds=45)
        await until(lambda: last_run() == (START.replace(second=0) + timedelta(minutes=1)).timestamp())
        assert lag("em_bsum") == 56 * 60  # a minute later, no new fire: one more minute behind
        service.stop()
        await task

    asyncio.run(main())


def test_tailed_zeek_logs_fire_the_network_detections_and_the_incident_is_delivered(tmp_path):
    """Without a keyboard: the tailer reads the Zeek conn.logs, the scheduler's first minute runs
    every detection's missed fire times, and the risk rule's incident reaches the jsonl output."""
    import shutil

    import yaml

    from exfilwatch.config import load_settings
    from exfilwatch.detections.schema import default_detections_dir
    from tests.test_risk_cli import CONFIG, NET_A, NET_B

    logs = tmp_path / "zeek"
    logs.mkdir()
    for name in (NET_A, NET_B):
        shutil.copyfile(default_detections_dir() / name / "data" / "positive_conn.log", logs / f"{name}.conn.log")
    root = tmp_path / "home"
    root.mkdir()
    config = {**CONFIG, "service": {"tail": [{"path": str(logs / "*.conn.log"), "source": "auto"}], "schedule": True}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    home = Home(root=root, config_path=root / "config.yaml")
    now = datetime(2026, 11, 1, 4, 30, tzinfo=timezone.utc)  # 00:30 in New York, as test_risk_cli's `run`
    service = Service(home, load_settings(home), list(load_detections([]).values()), clock=lambda: now)
    delivered = root / "incidents.jsonl"

    async def main() -> None:
        task = asyncio.create_task(service.serve())
        for _ in range(2400):
            if delivered.exists() and delivered.read_text().strip():
                break
            await asyncio.sleep(0.05)
        service.stop()
        await task

    asyncio.run(main())
    [incident] = [json.loads(line) for line in delivered.read_text().splitlines()]
    assert "mallory" in json.dumps(incident)
