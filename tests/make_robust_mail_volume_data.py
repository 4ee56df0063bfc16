"""Write the test data of `hosts_receiving_unusual_mail_volume_robust`
(src/exfilwatch/content/detections/hosts_receiving_unusual_mail_volume_robust/data/).

Zeek conn.log written by the synth writer: clients fetch mail from 10.10.0.5 (IMAPS 993) in a few
flows a day, four weeks of history in America/New_York; weekdays and weekends differ.

* positive (judged Saturday 2026-10-31): 10.20.0.66 pulls 2.5 GB against its usual 150 MB; 10.20.0.70,
  busy on weekdays (1.5 GB) and quiet at weekends (40 MB), pulls its weekday volume on the Saturday.
* negative (judged Monday 2026-10-26): 10.20.0.70 pulls its weekday volume on the Monday; 10.20.0.80
  goes from 5 MB to 60 MB (twelve times, under the absolute floor); 10.20.0.90 is always heavy (3 GB).

    python tests/make_robust_mail_volume_data.py      # rewrites the files
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from exfilwatch.synth.writers import zeek_conn

ZONE = ZoneInfo("America/New_York")
SERVER = "10.10.0.5"
FOLDER = (Path(__file__).resolve().parents[1] / "src" / "exfilwatch" / "content" / "detections"
          / "hosts_receiving_unusual_mail_volume_robust" / "data")
MB = 1_000_000


def usual(host: str, day: date, rng: random.Random) -> int:
    weekend = day.weekday() >= 5
    if host == "10.20.0.66":
        return int(150 * MB * rng.uniform(0.7, 1.3))
    if host == "10.20.0.70":
        return int((40 if weekend else 1500) * MB * rng.uniform(0.85, 1.15))
    if host == "10.20.0.80":
        return int(5 * MB * rng.uniform(0.8, 1.2))
    return int(3000 * MB * rng.uniform(0.85, 1.15))  # 10.20.0.90


def conn_log(path: Path, judged: date, today: dict[str, int]) -> None:
    rng = random.Random(judged.toordinal())
    records = []
    first = judged - timedelta(days=28)
    for offset in range(29):
        day = first + timedelta(days=offset)
        for n, host in enumerate(("10.20.0.66", "10.20.0.70", "10.20.0.80", "10.20.0.90")):
            total = today.get(host, usual(host, day, rng)) if day == judged else usual(host, day, rng)
            for part in range(4):  # a few fetches a day, the day's total split evenly
                t = datetime(day.year, day.month, day.day, 9 + 2 * part, 7 * n, tzinfo=ZONE)
                records.append(zeek_conn.ConnRecord(ts=t.timestamp(), orig_h=host, resp_h=SERVER,
                                                    orig_bytes=2000 + part, resp_bytes=total // 4,
                                                    uid=f"C{day:%m%d}{n}{part}robustmailAB"[:18]))
    records.sort(key=lambda r: r.ts)
    zeek_conn.write(path, records, open_=f"{first:%Y-%m-%d}-00-00-00",
                    close=f"{judged + timedelta(days=1):%Y-%m-%d}-00-00-00")


if __name__ == "__main__":
    FOLDER.mkdir(parents=True, exist_ok=True)
    conn_log(FOLDER / "positive_conn.log", date(2026, 10, 31), {"10.20.0.66": 2500 * MB, "10.20.0.70": 1500 * MB})
    conn_log(FOLDER / "negative_conn.log", date(2026, 10, 26), {"10.20.0.70": 1550 * MB, "10.20.0.80": 60 * MB,
                                                               "10.20.0.90": 3100 * MB})
