"""Write the `search:` of the four per-user email session rules from one template.

EM-FNum, EM-DNum, EM-BSum and EM-BSum-personal judge one feature each with the same model (the
user's own sessions, the peer group, the domains new to the user); only the feature, how its
numbers read (a count or a size in MB) and the evidence columns differ. The template below is
the one place that logic lives; tests/test_session_models.py checks that every rule's YAML holds
exactly what this script writes.

    python tools/make_em_rules.py      # rewrites the search of src/exfilwatch/content/detections/em_*/
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "exfilwatch" / "content" / "detections"


@dataclass(frozen=True)
class Rule:
    id: str
    label: str
    feature: str
    unit: str            # "count" or "bytes"
    noun: str            # what the count counts ("messages"), or "" for sizes
    new_value: str       # SQL over `nv` (the session's domains new to the user): the part of the value that went to them
    new_count: str       # SQL over `nv`: how many of the session's new domains that part went to
    org_value: str       # SQL over `nv`: the part of the value that went to domains new to the whole organisation
    columns: str         # the rule's own output columns, after the feature
    evidence: str        # the evidence columns, in the order an analyst reads them


RULES = (
    Rule("em_fnum", "EM-FNum", "em_fnum", "count", "messages",
         "least(coalesce(nv.new_domain_messages, 0), j.em_fnum)", "coalesce(nv.new_domains, 0)",
         "least(coalesce(nv.org_new_messages, 0), j.em_fnum)", "",
         "top_recipients, top_domains, largest_messages"),
    Rule("em_dnum", "EM-DNum", "em_dnum", "count", "domains",
         "coalesce(nv.new_domains, 0)", "coalesce(nv.new_domains, 0)", "coalesce(nv.org_new_domains, 0)", " em_fnum,",
         "top_domains, top_recipients"),
    # personal addresses are EM-BSum-personal's: counted here too, one 6 MB mail to a new webmail
    # domain would make two findings of one fact. What is judged is the volume to one new domain:
    # a leak goes to one place, while a salesperson's many new customers each get a little
    Rule("em_bsum", "EM-BSum", "em_bsum", "bytes", "",
         "least(coalesce(nv.largest_new_business_bytes, 0), j.em_bsum)", "coalesce(nv.new_business_domains, 0)",
         "least(coalesce(nv.largest_org_new_business_bytes, 0), j.em_bsum)", " em_fnum,",
         "largest_messages, top_domains, top_recipients"),
    Rule("em_bsum_personal", "EM-BSum-personal", "em_bsum_personal", "bytes", "",
         "least(coalesce(nv.new_personal_bytes, 0), j.em_bsum_personal)", "coalesce(nv.new_personal_domains, 0)",
         "least(coalesce(nv.org_new_personal_bytes, 0), j.em_bsum_personal)", " em_personal_fnum, em_bsum,",
         "largest_personal_messages, top_recipients, top_domains"),
)


def readable(rule: Rule, expr: str, bound: bool = False) -> str:
    """SQL text of a number as an analyst reads it: an integer count ("at most" a threshold: its
    floor), or a size: megabytes with one decimal from 0.1 MB, else whole kilobytes, else bytes
    (a median of 42 kB must not read "0.0 MB")."""
    if rule.unit == "bytes":
        return (f"CASE WHEN ({expr}) >= 100000 THEN CAST(round(({expr}) / 1000000, 1) AS VARCHAR) || ' MB' "
                f"WHEN ({expr}) >= 1000 THEN CAST(CAST(round(({expr}) / 1000) AS BIGINT) AS VARCHAR) || ' kB' "
                f"ELSE CAST(CAST(round({expr}) AS BIGINT) AS VARCHAR) || ' bytes' END")
    rounding = "floor" if bound else "round"
    return f"CAST(CAST({rounding}({expr}) AS BIGINT) AS VARCHAR)"


def multiple(expr: str) -> str:
    """SQL text of a parameter's multiple: "30", not "30.0"; "2.5" stays."""
    return (f"CASE WHEN ({expr}) = floor({expr}) THEN CAST(CAST({expr} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST({expr} AS VARCHAR) END")


def times(expr: str) -> str:
    """SQL text of a ratio: one decimal."""
    return f"CAST(round({expr}, 1) AS VARCHAR)"


TEMPLATE = """\
WITH judged AS (
    -- the sessions that closed in this run's window: each is judged once
    SELECT * FROM user_sessions WHERE _time >= $earliest AND _time < $latest
), history AS (
    -- the model: the same user's earlier sessions in the model window (as long as from $history
    -- to now: 90 days) in which they sent mail (a session with no mail at all says nothing
    -- about how much mail they send)
    -- (the judged sessions by `judged`'s own filter, not read from it: `scored` is then its only
    -- reader in a catch-up that reads the domain-novelty CTEs from the run's tables, so DuckDB
    -- scans it within `scored` instead of materialising every column of the chunk's sessions
    -- for two readers: em_bsum's and em_fnum's searches of one chunk at 1000 x 30, 0.67 -> 0.59
    -- CPU-s together, median of 5 alternated: docs/benchmarks.md, "Twelfth round")
    SELECT j.session_key, CAST(h.{feature} AS DOUBLE) AS v
    FROM user_sessions j JOIN user_sessions h
      ON h.user = j.user AND h._time < j._time AND h._time >= j._time - ($now - $history)
    WHERE j._time >= $earliest AND j._time < $latest AND h.messages_sent > 0
      -- only for a session that can fire: every threshold a finding must exceed is at least one of
      -- $floor, $new_domain_floor and $new_org_floor, and what went to new domains is at most the
      -- value, so the model of a session at or under the least of them is never read. A 1000-user
      -- month's first run judges 39,493 sessions, 3,054 of them above EM-BSum's 2 MB and 1,502
      -- above EM-FNum's 10 messages: the search 0.91 -> 0.60 CPU-s (EM-BSum), 0.86 -> 0.57 (EM-FNum)
      AND (j.{feature} > least($floor, $new_domain_floor, $new_org_floor) OR j.{feature} IS NULL)
), stats AS (
    SELECT session_key, count(*) AS n, avg(v) AS mean, stddev_samp(v) AS stdev, var_samp(v) AS variance,
           median(v) AS median, quantile_cont(v, 0.95) AS p95, max(v) AS max, median(ln(1 + v)) AS log_median
    FROM history GROUP BY session_key
), spread AS (
    -- robust: the median absolute deviation of log1p(v), grouped by the session alone (grouped by
    -- every column of `stats`, the hash of 10 keys over the 502,324 history pairs of a 1000-user
    -- month made each rule's search 0.73 instead of 0.54 CPU-s: docs/benchmarks.md, "Twelfth round")
    SELECT session_key, median(abs(ln(1 + h.v) - s.log_median)) AS log_mad
    FROM stats s JOIN history h USING (session_key)
    GROUP BY session_key
), model AS (
    SELECT s.*,
           -- robust: the MAD scaled to a standard deviation, floored
           greatest(1.4826 * d.log_mad, $robust_min_scale) AS log_scale,
           -- gamma by moments: shape = mean^2 / variance
           CASE WHEN s.variance > 0 AND s.mean > 0 THEN s.mean * s.mean / s.variance END AS shape
    FROM stats s JOIN spread d USING (session_key)
), peer_days AS (
    -- the peer group is the department; one peer model per department and UTC day judged
    SELECT DISTINCT department, date_trunc('day', _time) AS day FROM judged WHERE department IS NOT NULL
), peers AS (
    -- the department's sessions with mail in the model window before that day
    SELECT p.department, p.day, count(*) AS peer_sessions, count(DISTINCT h.user) AS peer_users,
           median(CAST(h.{feature} AS DOUBLE)) AS peer_median,
           quantile_cont(CAST(h.{feature} AS DOUBLE), 0.95) AS peer_p95
    FROM peer_days p JOIN user_sessions h
      ON h.department = p.department AND h._time < p.day AND h._time >= p.day - ($now - $history)
    WHERE h.messages_sent > 0
    GROUP BY p.department, p.day
), session_domains AS (
    -- each external domain a judged session mailed
    SELECT session_key, user, _time, d.domain AS domain, d.domain_class AS domain_class,
           d.messages AS messages, d.bytes AS bytes
    FROM (SELECT session_key, user, _time, unnest(recipient_domains) AS d FROM judged)
), earlier_domains AS (
    SELECT user, _time, d.domain AS domain, d.domain_class AS domain_class
    FROM (SELECT user, _time, unnest(recipient_domains) AS d FROM user_sessions
          WHERE _time >= $earliest - ($now - $history) AND _time < $latest)
), known_domains AS (
    -- those the user already mailed in an earlier session of the model window
    SELECT DISTINCT s.session_key, s.domain
    FROM session_domains s JOIN earlier_domains e
      ON e.user = s.user AND e.domain = s.domain AND e._time < s._time AND e._time >= s._time - ($now - $history)
), org_known_domains AS (
    -- those anyone in the organisation mailed in an earlier session of the model window: the
    -- domain's latest mailing before the session closed lies in it. One ordered pass per domain
    -- (a session comes before the mailings of its own instant) rather than each session paired
    -- with every mailing of its domain in the window: 5.7 M pairs for a week of sessions at 90
    -- days of 1000 users, 40 % of the rule's time
    SELECT DISTINCT session_key, domain FROM (
        SELECT session_key, domain, _time, judged,
               max(CASE WHEN NOT judged THEN _time END) OVER (
                   PARTITION BY domain ORDER BY _time, judged DESC
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS previously_mailed
        FROM (SELECT session_key, domain, _time, true AS judged FROM session_domains
              UNION ALL
              SELECT NULL AS session_key, domain, _time, false AS judged FROM earlier_domains))
    WHERE judged AND previously_mailed >= _time - ($now - $history)
), novelty AS (
    -- the session's domains new to the user: a stronger sign than volume to known partners; and
    -- those new to the whole organisation, stronger still (no colleague has a business with them)
    SELECT s.session_key, count(*) AS new_domains, sum(s.messages) AS new_domain_messages,
           count(*) FILTER (WHERE s.domain_class <> 'personal') AS new_business_domains,
           count(*) FILTER (WHERE s.domain_class = 'personal') AS new_personal_domains,
           coalesce(max(s.bytes) FILTER (WHERE s.domain_class <> 'personal'), 0) AS largest_new_business_bytes,
           -- of two new domains of one size, the greater name: a tie must not leave the choice to the engine
           arg_max(s.domain, struct_pack(b := s.bytes, d := s.domain)) FILTER (WHERE s.domain_class <> 'personal')
               AS largest_new_business_domain,
           coalesce(sum(s.bytes) FILTER (WHERE s.domain_class = 'personal'), 0) AS new_personal_bytes,
           count(*) FILTER (WHERE o.domain IS NULL) AS org_new_domains,
           coalesce(sum(s.messages) FILTER (WHERE o.domain IS NULL), 0) AS org_new_messages,
           coalesce(max(s.bytes) FILTER (WHERE o.domain IS NULL AND s.domain_class <> 'personal'), 0)
               AS largest_org_new_business_bytes,
           coalesce(sum(s.bytes) FILTER (WHERE o.domain IS NULL AND s.domain_class = 'personal'), 0)
               AS org_new_personal_bytes
    FROM session_domains s LEFT JOIN known_domains k ON k.session_key = s.session_key AND k.domain = s.domain
    LEFT JOIN org_known_domains o ON o.session_key = s.session_key AND o.domain = s.domain
    WHERE k.domain IS NULL
    GROUP BY s.session_key
), quantile AS (
    -- z such that P(Z > z) = $tail_probability (Abramowitz & Stegun 26.2.23, |error| < 4.5e-4)
    SELECT t - (2.515517 + 0.802853 * t + 0.010328 * t * t)
               / (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t) AS z_tail
    FROM (SELECT sqrt(-2 * ln($tail_probability)) AS t)
), data_start AS (
    -- the first session in the data: before $warmup_days of data everyone would be "first-time"
    SELECT min(_time) AS first_close FROM user_sessions WHERE _time >= $history
), introductions AS (
    -- business domains the user was the first in the organisation to mail (after its memory of
    -- domains warmed up): a salesperson who brings new companies every week is not news when
    -- they bring one more. First within the judged session's own model window, whatever range
    -- this run reads (an hourly fire, a catch-up pass): a mailing introduces its domain when the
    -- domain's previous mailing by anyone is before that window
    SELECT j.session_key, count(DISTINCT o.domain) AS introductions
    -- (the previous mailing before the instant, not before the row: daily sessions close at the
    -- same midnight, and of two users who first mail a domain then, both introduce it; ordering
    -- the rows of one instant would leave that to the engine, one run to the next)
    FROM judged j JOIN (SELECT e.user, e._time, e.domain, p.previously_mailed
                        FROM earlier_domains e
                        JOIN (SELECT domain, _time, lag(_time) OVER (PARTITION BY domain ORDER BY _time) AS previously_mailed
                              FROM (SELECT DISTINCT domain, _time FROM earlier_domains WHERE domain_class <> 'personal')) p
                          ON p.domain = e.domain AND p._time = e._time
                        -- implied by the join below for every judged session (they close before
                        -- $latest): only the mailings that can introduce a domain reach the join with
                        -- the user's sessions, a few hundred rather than 157,000 at 1000 users x 90 days
                        WHERE e.domain_class <> 'personal'
                          AND (p.previously_mailed IS NULL OR p.previously_mailed < $latest - ($now - $history))) o
      ON o.user = j.user AND o._time < j._time AND o._time >= j._time - ($now - $history)
     AND (o.previously_mailed IS NULL OR o.previously_mailed < j._time - ($now - $history))
    CROSS JOIN data_start d
    WHERE o._time >= d.first_close + to_days($domain_warmup_days)
    GROUP BY j.session_key
), scored AS (
    SELECT j.*, CAST(j.{feature} AS DOUBLE) AS value, coalesce(m.n, 0) AS model_sessions,
           m.mean, m.stdev, m.median, m.p95, m.max, m.log_median, m.log_scale, m.shape, q.z_tail,
           CAST({new_count} AS BIGINT) AS new_domains, CAST({new_value} AS DOUBLE) AS new_value,
           CAST({org_value} AS DOUBLE) AS org_value, nv.largest_new_business_domain AS largest_new_domain,
           coalesce(intro.introductions, 0) AS org_introductions,
           pr.peer_sessions, pr.peer_users, pr.peer_median, pr.peer_p95,
           CASE WHEN pr.peer_users >= $peer_minimum_users AND $peer_multiple > 0
                THEN $peer_multiple * pr.peer_p95 END AS peer_threshold,
           j._time >= d.first_close + to_days($warmup_days) AS warmed_up,
           -- "new to the user" and "new to the organisation" need a memory of domains long enough:
           -- in the first weeks of data every partner mailed once a month is new
           j._time >= d.first_close + to_days($domain_warmup_days) AS domains_warmed_up,
           CASE WHEN m.n IS NULL THEN NULL
                WHEN $method = 'zscore' THEN m.mean + $threshold * coalesce(m.stdev, 0)
                WHEN $method = 'robust' THEN exp(m.log_median + $threshold * m.log_scale) - 1
                -- gamma: the (1 - tail) quantile by the Wilson-Hilferty cube-root normal approximation
                WHEN $method = 'gamma' THEN
                    CASE WHEN m.shape IS NULL THEN m.mean
                         ELSE m.mean * pow(greatest(1 - 1 / (9 * m.shape) + q.z_tail / (3 * sqrt(m.shape)), 0), 3)
                    END
           END AS model_threshold
    FROM judged j LEFT JOIN model m USING (session_key) LEFT JOIN novelty nv USING (session_key)
    LEFT JOIN introductions intro USING (session_key)
    LEFT JOIN peers pr ON pr.department = j.department AND pr.day = date_trunc('day', j._time)
    CROSS JOIN quantile q CROSS JOIN data_start d
), judged_rows AS (
    SELECT *,
           -- a user with a thin history (a new hire, a new mailbox) is judged against the peer group
           -- until their own model converges; without one, only a first session can fire, at its floor
           CASE WHEN model_sessions >= $minimum_sessions THEN 'model'
                WHEN peer_threshold IS NOT NULL THEN 'peers'
                WHEN model_sessions = 0 THEN 'first-time'
                ELSE 'not-converged' END AS model_state,
           CASE $method
                WHEN 'zscore' THEN (value - mean) / nullif(stdev, 0)
                WHEN 'robust' THEN (ln(1 + value) - log_median) / log_scale
                WHEN 'gamma' THEN ((value / nullif(mean, 0)) ** (1.0 / 3) - (1 - 1 / (9 * shape)))
                                  * 3 * sqrt(shape)
           END AS deviation,
           -- the model's threshold stays within a sane multiple of what the user really sends: for a
           -- user whose sessions vary tenfold, exp(k x scale) is hundreds of times the median. The
           -- cap never goes below the robust threshold of a steady user (scale at its floor), so it
           -- lowers only thresholds that a wide spread inflated
           CASE WHEN $cap_multiple > 0
                THEN least(model_threshold, greatest($cap_multiple * max,
                           CASE WHEN $method = 'robust' THEN exp(log_median + $threshold * $robust_min_scale) - 1
                                ELSE 0 END))
                ELSE model_threshold END AS capped_threshold,
           greatest($p95_factor * coalesce(p95, 0), $max_factor * coalesce(max, 0)) AS own_tail
    FROM scored
), bounded AS (
    -- the threshold that applies: the user's (capped) model's, raised by the absolute floor, the
    -- user's own tail (their p95 session x $p95_factor: the median and MAD of log(1+x) describe the
    -- typical session, and a user whose median is 2 messages but whose busy days reach 40 has
    -- a narrow MAD that says nothing of those days) and their largest earlier session x
    -- $max_factor; the peer group's while the user's model has not converged; for a first
    -- session without peers, the first-time floor
    SELECT *,
           CASE model_state
                WHEN 'first-time' THEN greatest($first_time_floor, $floor)
                -- a thin history cannot set a threshold, but it shows what the user already did
                -- (a weekly newsletter's eighth send is not news)
                WHEN 'peers' THEN greatest(peer_threshold, $floor, coalesce(max, 0))
                ELSE greatest(capped_threshold, $floor, own_tail) END AS applied_threshold,
           CASE WHEN model_state = 'first-time' THEN 'first-time floor'
                WHEN model_state = 'peers' AND peer_threshold >= greatest($floor, coalesce(max, 0)) THEN 'peer group'
                WHEN model_state = 'peers' AND $floor >= coalesce(max, 0) THEN 'absolute floor'
                WHEN model_state = 'peers' THEN 'largest earlier session'
                WHEN capped_threshold >= greatest($floor, own_tail)
                    THEN CASE WHEN capped_threshold < model_threshold THEN 'cap' ELSE 'model' END
                WHEN $floor >= own_tail THEN 'absolute floor'
                WHEN $p95_factor * coalesce(p95, 0) >= $max_factor * coalesce(max, 0) THEN 'p95 session'
                ELSE 'largest earlier session' END AS threshold_kind,
           -- what went to domains new to the user fires from a multiple of the user's p95 session
           CASE WHEN model_state = 'model' AND domains_warmed_up AND $new_domain_multiple > 0
                THEN greatest($new_domain_multiple * p95, $new_domain_floor) END AS new_domain_threshold,
           -- what went to domains no one in the organisation mailed in the model window: no colleague
           -- does business there, so it is judged against the user's usual (median) session, not
           -- their p95 (their busy sessions with known partners). Measured on the six organisations
           -- of docs/detection-quality.md: the organisation's or the department's usual first
           -- mailing to a new company fired 6 to 11 benign users per profile where this fired none
           CASE WHEN model_state = 'model' AND domains_warmed_up AND $new_org_multiple > 0
                     AND org_introductions <= $max_org_introductions
                THEN greatest($new_org_multiple * median, $new_org_floor) END AS org_new_threshold
    FROM judged_rows
), fired AS (
    SELECT *,
           greatest(value / nullif(applied_threshold, 0), coalesce(new_value / nullif(new_domain_threshold, 0), 0),
                    coalesce(org_value / nullif(org_new_threshold, 0), 0)) AS times_over,
           CASE WHEN value > 0 THEN least(new_value / value, 1) ELSE 0 END AS new_share,
           CASE WHEN value > 0 AND org_new_threshold IS NOT NULL THEN least(org_value / value, 1) ELSE 0 END
               AS org_share,
           model_state = 'model' AND peer_threshold IS NOT NULL AND value > greatest(peer_threshold, $floor)
               AS above_peers
    FROM bounded
    -- before $warmup_days of data everyone has a thin history and the peer models are young
    WHERE ((model_state = 'model' OR (model_state IN ('peers', 'first-time') AND warmed_up))
           AND value > applied_threshold)
       OR new_value > new_domain_threshold
       OR org_value > org_new_threshold
)
SELECT user, department, session_key AS session_id, session_kind, session_start, session_end, _time,
       end_reason, boundary_source, vpn_session_id, src_ip, assigned_ip,
       '{label}' AS feature, CAST({feature} AS BIGINT) AS {feature},{columns}
       $method AS method, model_state, model_sessions,
       round(mean, 2) AS model_mean, round(stdev, 2) AS model_stdev, round(median, 2) AS model_median,
       round(p95, 2) AS model_p95, round(max, 2) AS model_max, round(model_threshold, 2) AS model_threshold,
       round(applied_threshold, 2) AS threshold, threshold_kind,
       round(value / nullif(applied_threshold, 0), 2) AS times_threshold,
       round(value - applied_threshold, 2) AS above_threshold,
       round(deviation, 2) AS deviation,
       CASE $method WHEN 'zscore' THEN 'standard deviations above the mean'
                    WHEN 'robust' THEN 'scaled MADs of log(1+x) above the median'
                    ELSE 'normal quantile of the gamma tail' END AS deviation_unit,
       round(value / nullif(median, 0), 1) AS times_usual,
       new_domains, CAST(new_value AS BIGINT) AS new_domain_value, round(new_domain_threshold, 2) AS new_domain_threshold,
       value > applied_threshold AS above_user_threshold, new_value > coalesce(new_domain_threshold, new_value) AS above_new_domain_threshold,
       CAST(org_value AS BIGINT) AS org_new_value, round(org_new_threshold, 2) AS org_new_threshold,
       org_value > coalesce(org_new_threshold, org_value) AS above_org_new_threshold, org_introductions,
       department AS peer_group, peer_users, peer_sessions, round(peer_median, 2) AS peer_median,
       round(peer_p95, 2) AS peer_p95, round(peer_threshold, 2) AS peer_threshold, coalesce(above_peers, false) AS above_peers,
       -- the risk score grows with how far above the threshold (by up to half, at twice it), with
       -- the share that went to domains new to the user (up to twice), again with the share new to
       -- the organisation where the rule judges it, and by a quarter when the peers find it
       -- abnormal too; at most 3 times the rule's score. Without new domains one rule stays under
       -- the notable 90 however large the value: size alone is not a leak
       round(least((1 + 0.5 * least(greatest(times_over - 1, 0), 1)) * (1 + new_share + org_share)
                   * CASE WHEN above_peers THEN 1.25 ELSE 1 END, 3), 2) AS score_factor,
       {observed} AS observed,
       CASE model_state
            WHEN 'first-time' THEN 'no earlier session: a first session fires above ' || {applied}
            WHEN 'peers' THEN 'at most ' || {applied} || ' (' || threshold_kind || ': '
                 || CAST($peer_multiple AS VARCHAR) || ' times the p95 of the ' || peer_sessions || ' sessions of '
                 || peer_users || ' users in ' || department || ', the user having ' || model_sessions
                 || ' of their own)'
            ELSE 'at most ' || {applied} || ' (' || threshold_kind || '; ' || $method
                 || ' model of ' || model_sessions || ' sessions: median ' || {median}
                 || ', p95 ' || {p95} || ', max ' || {max} || ')'
       END AS expected,
       {observed}
       || CASE WHEN median > 0 THEN ', ' || {times_usual} || ' times the usual ' || {median} ELSE '' END
       || CASE WHEN value > applied_threshold THEN ', ' || {times_threshold} || ' times the threshold ' || {applied}
               ELSE '' END
       || CASE WHEN new_domains > 0 THEN {novelty} ELSE '' END
       || CASE WHEN new_value > new_domain_threshold THEN ' (fires above ' || {new_threshold} || ', '
               || {new_multiple} || ' times the p95)' ELSE '' END
       || CASE WHEN org_new_threshold IS NOT NULL AND org_value > 0 THEN {org_novelty} ELSE '' END
       || CASE WHEN org_value > org_new_threshold THEN ' (fires above ' || {org_threshold} || ', '
               || {org_multiple} || ' times the usual)' ELSE '' END
       || CASE WHEN above_peers THEN '; also above the peer group ' || department || ' (' || {peer_threshold} || ')'
               ELSE '' END AS explanation,
       {evidence}
FROM fired
ORDER BY user, session_start
"""


def novelty(rule: Rule, r: Callable[[str], str], noun: str) -> str:
    """SQL text of what went to domains new to the user, as the rule judges it."""
    if rule.feature == "em_dnum":
        return "'; ' || new_domains || ' of them new to the user'"
    if rule.feature == "em_bsum":  # judged per domain: name the one
        return ("'; ' || " + r("new_value") + " || ' to ' || largest_new_domain || ', new to the user (of '"
                " || new_domains || ' new business domains)'")
    return "'; ' || " + r("new_value") + noun + " || ' to domains new to the user (' || new_domains || ')'"


def org_novelty(rule: Rule, r: Callable[[str], str], noun: str) -> str:
    """SQL text of what went to domains new to the organisation, as the rule judges it."""
    if rule.feature == "em_dnum":
        return "'; ' || " + r("org_value") + " || ' new to the organisation'"
    where = "one domain" if rule.feature == "em_bsum" else "domains"
    return "'; ' || " + r("org_value") + noun + f" || ' to {where} new to the organisation'"


def search(rule: Rule) -> str:
    r = lambda expr, bound=False: readable(rule, expr, bound)  # noqa: E731
    noun = f" || ' {rule.noun}'" if rule.noun else ""
    return TEMPLATE.format(
        feature=rule.feature, label=rule.label, columns=rule.columns, evidence=rule.evidence,
        new_value=rule.new_value, new_count=rule.new_count, org_value=rule.org_value,
        observed=r("value") + noun, applied=r("applied_threshold", bound=True), median=r("median"), p95=r("p95"),
        max=r("max"), times_usual=times("value / median"), times_threshold=times("value / applied_threshold"),
        novelty=novelty(rule, r, noun),
        new_threshold=r("new_domain_threshold", bound=True),
        org_novelty=org_novelty(rule, r, noun),
        org_threshold=r("org_new_threshold", bound=True),
        new_multiple=multiple("$new_domain_multiple"), org_multiple=multiple("$new_org_multiple"),
        peer_threshold=r("greatest(peer_threshold, $floor)", bound=True),
    )


def yaml_block(rule: Rule) -> str:
    return "search: |\n" + "".join(f"  {line}\n" if line else "\n" for line in search(rule).splitlines())


def rewrite(path: Path, rule: Rule) -> bool:
    text = path.read_text()
    new = re.sub(r"^search: \|\n(?:(?:  .*)?\n)*?(?=^\S)", lambda _: yaml_block(rule), text, count=1, flags=re.M)
    if new != text:
        path.write_text(new)
    return new != text


def main() -> int:
    for rule in RULES:
        if rewrite(ROOT / rule.id / "detection.yml", rule):
            print(f"rewrote {rule.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
