"""Organisation profiles for the generator: what kind of company `generate --org --profile NAME`
writes.

A profile is the set of habits the generated people have; everything else (the calendar, the
cases' mechanics, the log formats) is shared. `default` is the organisation the detection
defaults were first chosen on (the demo and the tests use it; its files do not change). The
others differ from it on purpose, so that a default tuned on one is measured on another:

* `varied` — users whose mail volume spreads over two orders of magnitude between users and
  varies by an order of magnitude from day to day (a gamma day factor with shape 0.7), part-time
  VPN users (a VPN day in four) and always-on ones (every working day, twelve hours and more),
  finance month-end for the whole department, fortnightly marketing campaigns to many domains,
  a billing mailbox that mails customers every day, a few always-heavy users; Ivanti Connect
  Secure 22.x syslog (session ids `sid…` on the login, `session: sid…` on the tunnel lines and
  in a fourth bracket) and Exchange message tracking by default. Two more leak cases: volume to
  a business domain the user never mailed, fifteen times their usual day, in one session.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    rate_sigma: float = 0.55  # log-sd of the users' median daily message counts around their department's
    day_shape: float = 4.0  # gamma shape of each user's day-to-day factor (mean 1): smaller varies more
    part_time_share: float = 0.0  # employees who use the VPN one working day in four
    always_on_share: float = 0.0  # employees on the VPN every working day, for twelve hours and more
    finance_reporters: int = 4  # finance users who send month-end and weekly reports
    campaigns: bool = False  # marketing campaigns: 25-45 messages to prospects every other Wednesday
    billing_mailbox: bool = False  # billing@: invoices to customers every business day, more at month-end
    heavy_users: int = 0  # users who always send five times as much, mostly attachments
    new_domain_volume: bool = False  # leak case: 15x the usual day to a never-mailed business domain
    vpn_syslog: str = "rsyslog"  # the Pulse / Ivanti syslog form (synth/writers/pulse_secure.py)
    mail: str = "postfix"  # the mail server's log when `--mail` is not given


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("default", "the organisation the defaults were first chosen on: Pulse Secure 9.1 syslog, Postfix"),
    Profile("varied", "volumes that vary by an order of magnitude, part-time and always-on VPN users, "
                      "campaigns, a billing mailbox, heavy users; Ivanti 22.x syslog, Exchange",
            rate_sigma=1.1, day_shape=0.7, part_time_share=0.15, always_on_share=0.1, finance_reporters=12,
            campaigns=True, billing_mailbox=True, heavy_users=3, new_domain_volume=True,
            vpn_syslog="ics22", mail="exchange"),
)}


def profile(name: str) -> Profile:
    """The profile called `name`; a ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown organisation profile {name!r}: expected one of {', '.join(PROFILES)}") from None
