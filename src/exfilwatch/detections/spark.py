"""The Spark engine: the same detections, transpiled by SQLGlot, on PySpark over the same lake.

For a user whose lake outgrows one machine. A detection's DuckDB SQL is parsed once, its named
parameters are replaced by typed literals (times as UTC timestamps; the Spark session runs in
UTC like the DuckDB one), and SQLGlot writes it as Spark SQL. The data-model views are built
from the committed Parquet files, with the same query-time enrichment (`src_category`, `_day`)
as DuckDB's, so the findings are the same; `tests/test_spark_conformance.py` checks that on
every shipped detection that reads a lake model.

PySpark is an optional dependency (`pip install exfilwatch[spark]`, Java 17+).
"""

from __future__ import annotations

from exfilwatch.errors import UsageError

import re
from datetime import datetime, timezone
from typing import Any

import sqlglot
from sqlglot import exp

from exfilwatch.config import Settings, memory_bytes
from exfilwatch.detections.runner import compiled_sql, data_range
from exfilwatch.detections.schema import Detection
from exfilwatch.events.engine import connect, register_lake_views, sent_by_user_sources
from exfilwatch.events.tables import LAKE
from exfilwatch.models import DATA_MODELS, EMAIL
from exfilwatch.sources.mailcommon import query_time_columns
from exfilwatch.state import StateStore


class SparkUnavailable(UsageError):
    pass


def spark_session(settings: Settings, master: str | None = None):
    """A Spark session on `master` (default the config's `spark.master`), in UTC like DuckDB's."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailable("the Spark engine needs PySpark: pip install 'exfilwatch[spark]' (and Java 17+)") from None
    builder = (
        SparkSession.builder.master(master or settings.spark.master).appName("exfilwatch")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", f"{max(1, memory_bytes(settings.memory_limit) // 2**20)}m")
    )
    for key, value in settings.spark.conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def spark_lake_paths(settings: Settings, state: StateStore, model: str) -> list[str]:
    """The model's committed lake files as Spark's executors reach them: under `spark.lake_uri`
    when the lake is copied or mounted elsewhere (S3, HDFS), else their local paths."""
    files = state.lake_files(model)
    if not settings.spark.lake_uri:
        return files
    base = settings.spark.lake_uri.rstrip("/")
    lake_prefix = LAKE + "/"
    mapped = []
    for path in files:
        relative = state.relative(path)
        if not relative.startswith(lake_prefix):
            raise SparkUnavailable(f"{path}: a lake file outside the home's lake/ folder cannot be mapped to "
                                   f"spark.lake_uri {settings.spark.lake_uri}")
        mapped.append(f"{base}/{relative[len(lake_prefix):]}")
    return mapped


# DuckDB functions with no Spark SQL equivalent that rules use to word their findings, written as
# Spark SQL of the same result (no Python UDF: executors on a cluster need no exfilwatch install).
# `__x__` stands for the function's argument.
_SIZE_UNITS = ["kB", "MB", "GB", "TB", "PB"]
# formatReadableDecimalSize: powers of 1000, one decimal cut, not rounded (1949 -> 1.9 kB)
_READABLE_SIZE = (
    "CASE WHEN __x__ IS NULL THEN NULL WHEN abs(__x__) = 1 THEN concat(CASE WHEN __x__ < 0 THEN '-' ELSE '' END, '1 byte') "
    "WHEN abs(__x__) < 1000 THEN concat(CAST(__x__ AS STRING), ' bytes') "
    + " ".join(
        f"WHEN abs(__x__) < {1000 ** (i + 2)} OR {i} = {len(_SIZE_UNITS) - 1} THEN concat(CASE WHEN __x__ < 0 THEN '-' ELSE '' END, "
        f"CAST(abs(__x__) DIV {1000 ** (i + 1) // 10} DIV 10 AS STRING), '.', CAST(abs(__x__) DIV {1000 ** (i + 1) // 10} % 10 AS STRING), "
        f"' {unit}')"
        for i, unit in enumerate(_SIZE_UNITS))
    + " END"
)
# format('{:.Ng}', x): Java's %.Ng picks fixed or scientific notation as C and Python do, but rounds
# a tie up where DuckDB's fmt rounds half to even (so the value is first rounded to N significant
# digits with bround, scaled by a power of ten: Spark's bround needs a constant scale), and keeps
# the fraction's trailing zeros (and a bare point) that fmt drops
_SCALE = "CAST({digits} - 1 - floor(log10(abs(CAST(__x__ AS DOUBLE)))) AS INT)"
_ROUNDED = (f"CASE WHEN CAST(__x__ AS DOUBLE) = 0 OR isnan(CAST(__x__ AS DOUBLE)) THEN CAST(__x__ AS DOUBLE) "
            f"WHEN {_SCALE} >= 0 THEN bround(CAST(__x__ AS DOUBLE) * power(10, {_SCALE}), 0) / power(10, {_SCALE}) "
            f"ELSE bround(CAST(__x__ AS DOUBLE) / power(10, -{_SCALE}), 0) * power(10, -{_SCALE}) END")
# (format_string writes a null as 'null': a null stays null, as in DuckDB)
_GENERAL_FORMAT = ("CASE WHEN __x__ IS NOT NULL THEN regexp_replace(regexp_replace(format_string('%.{digits}g', "
                   + _ROUNDED + "), '(\\\\.[0-9]*?)0+(e|$)', '$1$2'), '\\\\.(e|$)', '$1') END")
_GENERAL_TEMPLATE = re.compile(r"\{:\.(\d{1,2})g\}")


def _spark_expression(template: str, argument: exp.Expression) -> exp.Expression:
    tree = sqlglot.parse_one(template, read="spark")
    return tree.transform(lambda n: argument.copy() if isinstance(n, exp.Column) and n.name == "__x__" else n)


def _spark_format(node: exp.Format) -> exp.Expression:
    template = node.this.name if isinstance(node.this, exp.Literal) else None
    general = _GENERAL_TEMPLATE.fullmatch(template or "")
    if general is None or len(node.expressions) != 1:
        raise SparkUnavailable(f"format({node.this.sql()}, …) has no Spark form: the Spark engine knows "
                               "format('{:.Ng}', value) with one value")
    return _spark_expression(_GENERAL_FORMAT.format(digits=general.group(1)), node.expressions[0])


def _literal(value: Any) -> exp.Expression:
    if isinstance(value, datetime):
        utc = value.astimezone(timezone.utc).replace(tzinfo=None)
        return exp.cast(exp.Literal.string(utc.isoformat(sep=" ")), exp.DataType.build("TIMESTAMP"))
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


def to_spark_sql(sql: str, params: dict[str, Any]) -> str:
    """DuckDB SQL with `$name` parameters → Spark SQL with the values inlined."""
    tree = sqlglot.parse_one(sql, read="duckdb")

    def inline(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder) and node.name in params:
            return _literal(params[node.name])
        return node

    def spark_functions(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.ToDays):  # DuckDB's to_days(n) is an interval of n days
            return exp.Anonymous(this="make_dt_interval", expressions=[node.this])
        if isinstance(node, exp.PercentileCont) and node.expression is not None:
            # DuckDB's quantile_cont(x, q) interpolates linearly between the closest ranks, as Spark's percentile does
            return exp.Anonymous(this="percentile", expressions=[node.this, node.expression])
        if isinstance(node, exp.Format):
            return _spark_format(node)
        if isinstance(node, exp.Anonymous) and node.name.lower() == "formatreadabledecimalsize":
            return _spark_expression(_READABLE_SIZE, node.expressions[0])
        return node

    return tree.transform(inline).transform(spark_functions).sql(dialect="spark")


def _local_day_spark(column: str, tz: str) -> str:
    return f"to_utc_timestamp(date_trunc('DAY', from_utc_timestamp({column}, '{tz}')), '{tz}')"


def register_spark_views(spark, settings: Settings, state: StateStore, start: datetime, end: datetime) -> None:
    """Spark views named like the data models, over the committed lake files, enriched as in DuckDB."""
    from pyspark.sql import functions as F

    # The asset map comes from the same code as DuckDB's; it is small (one row per address).
    con = connect(settings)
    register_lake_views(con, settings, state, start, end)
    cursor = con.execute("SELECT ip, category, categories, bunit, owner, priority FROM lake.asset_map")
    assets = cursor.fetchall()
    con.close()
    asset_schema = "ip string, category string, categories array<string>, bunit string, owner string, priority string"
    spark.createDataFrame(assets, schema=asset_schema).createOrReplaceTempView("asset_map")
    for model in DATA_MODELS.values():
        files = spark_lake_paths(settings, state, model.name)
        if files:
            # files older than a model's added columns lack them: merge the schemas, add what is missing
            reader = spark.read.option("mergeSchema", "true") if model.added_columns else spark.read
            frame = reader.parquet(*files).drop("day")
            for name in model.added_columns:
                if name not in frame.columns:
                    frame = frame.withColumn(name, F.lit(None).cast(_spark_type(dict(model.columns)[name])))
        else:
            frame = spark.createDataFrame([], ", ".join(f"`{n}` {_spark_type(t)}" for n, t in model.columns))
        frame = frame.where((F.col("_time") >= F.lit(start.astimezone(timezone.utc).replace(tzinfo=None)))
                            & (F.col("_time") < F.lit(end.astimezone(timezone.utc).replace(tzinfo=None))))
        frame.createOrReplaceTempView(f"{model.name}_stored")
        day = _local_day_spark("t._time", settings.timezone)
        if model.name == "network_traffic":
            spark.sql(f"""
                CREATE OR REPLACE TEMP VIEW network_traffic AS
                SELECT t.*, s.category AS src_category, d.category AS dest_category,
                       s.categories AS src_categories, d.categories AS dest_categories,
                       s.bunit AS src_bunit, d.bunit AS dest_bunit, {day} AS _day
                FROM network_traffic_stored t
                LEFT JOIN asset_map s ON t.src_ip = s.ip
                LEFT JOIN asset_map d ON t.dest_ip = d.ip
            """)
        elif model.name == EMAIL.name:
            # direction and event type from the internal_domains configured now, as in DuckDB
            replaced = query_time_columns(settings.internal_domains, sent_by_user_sources())
            listed = ", ".join(f"({sqlglot.transpile(replaced[c], read='duckdb', write='spark')[0]}) AS {c}"
                               if c in replaced else f"t.`{c}`" for c in model.column_names)
            spark.sql(f"CREATE OR REPLACE TEMP VIEW email AS SELECT {listed}, {day} AS _day FROM email_stored t")
        else:
            spark.sql(f"CREATE OR REPLACE TEMP VIEW {model.name} AS SELECT t.*, {day} AS _day FROM {model.name}_stored t")


def _spark_type(duckdb_type: str) -> str:
    return {"TIMESTAMPTZ": "timestamp", "VARCHAR": "string", "INTEGER": "int", "BIGINT": "bigint",
            "DOUBLE": "double", "VARCHAR[]": "array<string>"}.get(duckdb_type, "string")


def _python_value(value: Any) -> Any:
    """A Spark value as DuckDB's Python client gives it: a struct as a dict (Spark's Row is a tuple),
    lists of them likewise, a naive datetime in the session zone (UTC) as an aware one."""
    from pyspark.sql import Row

    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if isinstance(value, Row):
        return {k: _python_value(v) for k, v in value.asDict(recursive=False).items()}
    if isinstance(value, list):
        return [_python_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _python_value(v) for k, v in value.items()}
    return value


def execute_spark(spark, state: StateStore, settings: Settings, detection: Detection,
                  params: dict[str, Any]) -> list[dict[str, Any]]:
    """`runner.execute` on Spark: the same compiled SQL, transpiled, over the same committed lake files."""
    if "spark" not in detection.engines:
        raise SparkUnavailable(f"{detection.id}: not written for Spark (its `engines` are {detection.engines})")
    start, end = data_range(params)
    register_spark_views(spark, settings, state, start, end)
    rows = spark.sql(to_spark_sql(compiled_sql(detection), params)).collect()
    return [{k: _python_value(v) for k, v in row.asDict().items()} for row in rows]
