"""Recipient domains: the registered domain and a class — internal, personal, disposable or external.

* registered domain: the public suffix plus one label (`mail.corp.co.uk` → `corp.co.uk`), from the
  Public Suffix List snapshot bundled with tldextract (a suffix the list does not know, such as
  `.example` or `.corp`, keeps the last two labels; IP literals are kept whole). No network at run time: the extractor is
  built with no suffix-list URLs and no cache folder, so it never fetches or writes anything.
* classes, first match wins:
  - `internal`: the domain or its registered domain is one of `internal_domains` (or a
    subdomain of one);
  - `personal`: free webmail and consumer ISP mail (src/exfilwatch/data/personal_domains.txt;
    `name.*` matches `name` under any public suffix, e.g. `hotmail.*`); config.yaml's
    `personal_domains: {add: [...], remove: [...]}` extends or reduces it;
  - `disposable`: the `disposable-email-domains` package's block list (throw-away inboxes);
  - `external`: everything else.

`register_domain_table` makes the DuckDB table `domain_info(domain, registered_domain,
domain_class)` for a set of domains, so SQL joins on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import duckdb
import pyarrow as pa

from exfilwatch.config import Settings
from exfilwatch.sources.arrow import table_of

INTERNAL, PERSONAL, DISPOSABLE, EXTERNAL = "internal", "personal", "disposable", "external"
DOMAIN_CLASSES = (INTERNAL, PERSONAL, DISPOSABLE, EXTERNAL)


@lru_cache(maxsize=1)
def _extractor():
    import tldextract

    # suffix_list_urls=() and cache_dir=None: use the bundled snapshot, never fetch, never write.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=False)


def normalise_domain(domain: str | None) -> str:
    if not domain:
        return ""
    return domain.strip().strip("<>[]").rstrip(".").lower()


@lru_cache(maxsize=200_000)
def _split(domain: str) -> tuple[str, str]:
    """(registered domain, the label under the public suffix) of a normalised domain."""
    result = _extractor()(domain)
    if result.suffix and result.domain:
        return f"{result.domain}.{result.suffix}", result.domain
    labels = domain.split(".")
    if len(labels) < 2 or all(label.isdigit() for label in labels) or ":" in domain:
        return domain, domain  # an IP literal or a bare host name: kept as is
    return ".".join(labels[-2:]), labels[-2]  # a suffix the list does not know (.example, .corp): last two labels


def registered_domain(domain: str | None) -> str:
    """`mail.corp.co.uk` → `corp.co.uk`; an address or a bare name is kept as given (lower case)."""
    name = normalise_domain(domain)
    if "@" in name:
        name = name.rsplit("@", 1)[1]
    return _split(name)[0] if name else ""


@lru_cache(maxsize=1)
def shipped_personal_domains() -> tuple[str, ...]:
    text = resources.files("exfilwatch").joinpath("data/personal_domains.txt").read_text(encoding="utf-8")
    return tuple(line.strip().lower() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


@lru_cache(maxsize=1)
def disposable_domains() -> frozenset[str]:
    from disposable_email_domains import blocklist

    return frozenset(d.lower() for d in blocklist)


@dataclass(frozen=True)
class DomainClassifier:
    internal: frozenset[str]
    personal: frozenset[str]  # exact registered domains
    personal_names: frozenset[str]  # `name.*` patterns: the label under the public suffix
    disposable: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> "DomainClassifier":
        return cls.build(settings.internal_domains, settings.personal_domains.add, settings.personal_domains.remove)

    @classmethod
    def build(cls, internal: Iterable[str] = (), add: Iterable[str] = (), remove: Iterable[str] = ()) -> "DomainClassifier":
        removed = {normalise_domain(d) for d in remove}
        entries = [d for d in (*shipped_personal_domains(), *(normalise_domain(d) for d in add)) if d not in removed]
        exact = frozenset(d for d in entries if not d.endswith(".*"))
        names = frozenset(d[:-2] for d in entries if d.endswith(".*"))
        return cls(
            internal=frozenset(normalise_domain(d) for d in internal if d),
            personal=exact,
            personal_names=names,
            disposable=disposable_domains() - exact - {normalise_domain(d) for d in internal},
        )

    def is_internal(self, domain: str) -> bool:
        name = normalise_domain(domain)
        if name in self.internal:
            return True
        return any(name.endswith("." + internal) for internal in self.internal)

    def classify(self, domain: str | None) -> tuple[str, str]:
        """(registered domain, class) of a recipient domain."""
        name = normalise_domain(domain)
        if "@" in name:
            name = name.rsplit("@", 1)[1]
        if not name:
            return "", EXTERNAL
        registered, label = _split(name)
        if self.is_internal(name) or registered in self.internal:
            return registered, INTERNAL
        if registered in self.personal or name in self.personal or (label != registered and label in self.personal_names):
            return registered, PERSONAL
        if registered in self.disposable or name in self.disposable:
            return registered, DISPOSABLE
        return registered, EXTERNAL


DOMAIN_SCHEMA = pa.schema([("domain", pa.string()), ("registered_domain", pa.string()), ("domain_class", pa.string())])


def domain_table(domains: Iterable[str | None], classifier: DomainClassifier) -> pa.Table:
    """One row per distinct domain as written (matched in SQL on lower(domain))."""
    seen: dict[str, tuple[str, str]] = {}
    for domain in domains:
        key = (domain or "").lower()
        if key not in seen:
            seen[key] = classifier.classify(domain)
    return table_of(
        {"domain": list(seen), "registered_domain": [v[0] for v in seen.values()],
         "domain_class": [v[1] for v in seen.values()]},
        DOMAIN_SCHEMA,
    )


def register_domain_table(con: duckdb.DuckDBPyConnection, settings: Settings, domains_sql: str | None = None,
                          name: str = "domain_info") -> int:
    """Create table `name`(domain, registered_domain, domain_class) for the domains `domains_sql` selects.

    `domains_sql` is a query with one column of domains; by default every recipient and sender
    domain of the `email` view. Join on `lower(domain)`.
    """
    if domains_sql is None:
        domains_sql = ("SELECT DISTINCT lower(d) FROM (SELECT unnest(recipient_domain) AS d FROM email "
                       "UNION SELECT src_user_domain FROM email) WHERE d IS NOT NULL")
    domains = [row[0] for row in con.execute(domains_sql).fetchall()]
    table = domain_table(domains, DomainClassifier.from_settings(settings))
    con.register("_domain_info_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _domain_info_arrow")
    finally:
        con.unregister("_domain_info_arrow")
    return table.num_rows
