"""A generated organisation for the console's tests, with an XSS corpus in its logs.

`build_console_home` generates a small organisation (synth), writes hostile strings into its
real log lines before ingesting them — mail subjects (Postfix `cleanup` header lines),
recipients, a VPN user name (Pulse Secure), and lines that go to quarantine — then runs the
pipeline as `exfilwatch demo` does and adds one user per role. `login` logs a TestClient in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from exfilwatch import pipeline
from exfilwatch.config import Home, Settings, load_settings
from exfilwatch.detections.schema import Detection, load_detections
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import writer
from exfilwatch.synth.org import generate_organisation
from exfilwatch.web.users import SCHEMA as USERS, add_user

END = date(2026, 10, 31)
PASSWORD = "correct horse battery"
XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)",
       "<svg/onload=alert(1)>", "'-alert(1)-'", "</textarea><script>alert(1)</script>"]
# Pulse Secure user names end at '/' or '(': a payload that fits one
HOSTILE_USER = '"><svg onload=alert`1`>'
HOSTILE_RECIPIENT = 'javascript:alert(1)//"onmouseover=alert(1)@gmail.com'


@dataclass
class ConsoleHome:
    home: Home
    settings: Settings
    catalog: dict[str, Detection]
    now: datetime


def _inject(logs: Path) -> None:
    mail = (logs / "maillog").read_text().splitlines()
    personal = re.compile(r"to=<([a-z0-9.]+\.home@gmail\.com)>")
    leaked = {m.group(1) for line in mail for m in [personal.search(line)] if m}
    queue_ids = {line.split(": ", 2)[1] for line in mail if any(f"to=<{a}>" in line for a in leaked)}
    out = []
    for n, line in enumerate(mail):
        for address in leaked:
            line = line.replace(f"to=<{address}>", f"to=<{HOSTILE_RECIPIENT}>")
        out.append(line)
        if "postfix/cleanup" in line and "message-id=" in line and line.split(": ", 2)[1] in queue_ids:
            stamp, qid = line[:15], line.split(": ", 2)[1]
            subject = XSS[n % len(XSS)] + " " + " ".join(XSS)
            out.append(f"{stamp} mx1 postfix/cleanup[7003]: {qid}: info: header Subject: {subject} from "
                       f"localhost[127.0.0.1]; from=<x@corp.example> to=<y@gmail.com> proto=ESMTP helo=<localhost>")
    for n, payload in enumerate(XSS):
        out.append(f"Oct 20 10:00:0{n} mx1 postfix/qmgr[7806]: BAD{n:07d}: from=<{payload}>, size=what")
    (logs / "maillog").write_text("\n".join(out) + "\n")
    vpn = (logs / "vpn.log").read_text().splitlines()
    template = next(line for line in vpn if "Login succeeded for" in line)
    user = re.search(r"\] (\S+?)\(", template).group(1)
    vpn.append(template.replace(user, HOSTILE_USER))
    (logs / "vpn.log").write_text("\n".join(vpn) + "\n")


def build_console_home(root: Path, users: int = 20, days: int = 21, seed: int = 1) -> ConsoleHome:
    logs, home_dir = root / "logs", root / "home"
    dataset = generate_organisation(logs, users=users, days=days, seed=seed, end=END)
    _inject(logs)
    home_dir.mkdir(parents=True)
    (home_dir / "config.yaml").write_text(Path(dataset.config).read_text())
    home = Home(root=home_dir, config_path=home_dir / "config.yaml")
    settings = load_settings(home)
    catalog = load_detections()
    now = datetime.combine(END + timedelta(days=1), time(0, 0), tzinfo=ZoneInfo(settings.timezone))
    with writer(home) as state:
        list(ingest_paths([dataset.vpn_log, dataset.mail_log, dataset.conn_log], home, settings))
        con = connect(settings, home.spill_dir)
        chosen = [d for d in catalog.values() if d.data_model in ("network_traffic", "user_sessions")
                  and d.type != "correlation"]
        pipeline.run(con, state, settings, list(catalog.values()), now,
                     pipeline.Options(detections=chosen, deliver=False))
        con.close()
        state.migrate([USERS])
        for role in ("viewer", "analyst", "admin"):
            add_user(state, role, role, PASSWORD, actor="test", now=now)
    return ConsoleHome(home, settings, catalog, now)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name: str, password: str = PASSWORD):  # noqa: ANN001, ANN201
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token},
                       follow_redirects=False)


_built: dict[str, ConsoleHome] = {}


def console_home_copy(cache: Path, target: Path) -> ConsoleHome:
    """A private copy of the generated home (built once per test session into `cache`)."""
    import shutil

    if "home" not in _built:
        _built["home"] = build_console_home(cache)
    built = _built["home"]
    shutil.copytree(built.home.root, target)
    home = Home(root=target, config_path=target / "config.yaml")
    return ConsoleHome(home, load_settings(home), built.catalog, built.now)
