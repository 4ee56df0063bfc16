"""The Spark engine: the same SQL, transpiled by SQLGlot, on PySpark over the same lake.

For a user whose lake outgrows one machine. DuckDB SQL is parsed once, its named parameters
are replaced by typed literals (times as UTC timestamps; the Spark session runs in UTC like the
DuckDB one), DuckDB-only functions are rewritten here, in one place, as Spark SQL of the same
result (`to_spark_sql`), and SQLGlot writes the rest. The data-model views are built from the
committed Parquet files (never a glob of the folder), with the same query-time enrichment
(`src_category`, `_day`, the email direction) as DuckDB's.

Two users: a detection's search (detections/spark.py), and the sessions build, whose sequence
of temp-table steps runs unchanged on a `SparkConnection` (features/sessions.py picks Spark-ready
SQL only where the engines differ: ASOF joins, local clock times). `tests/test_spark_conformance.py`
requires the same rows from both engines.

PySpark is an optional dependency (`pip install exfilwatch[spark]`, Java 17+).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import sqlglot
from sqlglot import exp

from exfilwatch.config import Settings, memory_bytes
from exfilwatch.events.engine import connect, register_lake_views, sent_by_user_sources
from exfilwatch.errors import UsageError
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
        .config("spark.ui.showConsoleProgress", "false")
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
    if template is not None and template.startswith("%"):
        return node  # printf's template (a rewrite's own format_string): Spark's format_string reads it alike
    general = _GENERAL_TEMPLATE.fullmatch(template or "")
    if general is None or len(node.expressions) != 1:
        raise SparkUnavailable(f"format({node.this.sql()}, …) has no Spark form: the Spark engine knows "
                               "format('{:.Ng}', value) with one value")
    return _spark_expression(_GENERAL_FORMAT.format(digits=general.group(1)), node.expressions[0])


def _utc_view(node: exp.Anonymous) -> exp.Expression:
    """DuckDB's timezone('UTC', instant) is the instant on the UTC clock: in the UTC Spark session,
    the instant itself. Another zone's clock is written per step (features/sessions.py `_local`)."""
    zone, value = node.expressions
    if not (isinstance(zone, exp.Literal) and zone.name.upper() == "UTC"):
        raise SparkUnavailable(f"{node.sql(dialect='duckdb')}: timezone() with a zone other than UTC has no "
                               "Spark form that knows its argument's type: write from_utc_timestamp/to_utc_timestamp")
    return value


# strftime's codes as Java's DateTimeFormatter letters; other letters are quoted as text
_STRFTIME_CODES = {"Y": "yyyy", "m": "MM", "d": "dd", "H": "HH", "M": "mm", "S": "ss", "y": "yy", "j": "DDD",
                   "f": "SSSSSS"}
_STRFTIME_PART = re.compile(r"%(.)|([A-Za-z]+)|(')|([^%A-Za-z']+)")


def _java_time_format(strftime: str) -> str:
    parts = []
    for code, letters, quote, other in _STRFTIME_PART.findall(strftime):
        if code:
            if code not in _STRFTIME_CODES:
                raise SparkUnavailable(f"strftime format {strftime!r}: %{code} has no Spark form here")
            parts.append(_STRFTIME_CODES[code])
        elif letters:
            parts.append(f"'{letters}'")
        else:
            parts.append("''" if quote else other)
    return "".join(parts)


def _top_n(node: exp.ArgMax | exp.ArgMin, condition: exp.Expression | None) -> exp.Expression:
    """DuckDB's max_by(value, key, n) / min_by(...): the values of the n rows of largest (smallest)
    key, in that order. Spark's take one row: collect (key, value) pairs, sort, slice."""
    pairs = exp.Anonymous(this="collect_list", expressions=[exp.Struct(expressions=[
        exp.PropertyEQ(this=exp.to_identifier("k"), expression=node.expression.copy()),
        exp.PropertyEQ(this=exp.to_identifier("v"), expression=node.this.copy())])])
    collected = exp.Filter(this=pairs, expression=condition.copy()) if condition is not None else pairs
    ordered = exp.Anonymous(this="sort_array", expressions=[collected, exp.Boolean(this=isinstance(node, exp.ArgMin))])
    sliced = exp.Anonymous(this="slice", expressions=[ordered, exp.Literal.number(1), node.args["count"].copy()])
    return _values_of(sliced)


def _sorted_list(order: exp.Order) -> exp.Expression:
    """DuckDB's list(value ORDER BY key): Spark's collect_list keeps no order, so pairs are sorted."""
    if any(o.args.get("desc") for o in order.expressions):
        raise SparkUnavailable("list(… ORDER BY … DESC) has no Spark form here")
    pairs = exp.Anonymous(this="collect_list", expressions=[exp.Struct(expressions=[
        *[exp.PropertyEQ(this=exp.to_identifier(f"k{i}"), expression=o.this.copy())
          for i, o in enumerate(order.expressions)],
        exp.PropertyEQ(this=exp.to_identifier("v"), expression=order.this.copy())])])
    return _values_of(exp.Anonymous(this="sort_array", expressions=[pairs]))


def _values_of(pairs: exp.Expression) -> exp.Expression:
    """The `v` of each struct of the array `pairs`, in order."""
    return sqlglot.parse_one("transform(__list__, e -> e.v)", read="spark").transform(
        lambda n: pairs if isinstance(n, exp.Column) and n.name == "__list__" else n)


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
        if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
            node = node.this
        if isinstance(node, exp.AnyValue):  # DuckDB's any_value skips nulls: Spark's does when told
            return exp.Anonymous(this="any_value", expressions=[node.this, exp.Boolean(this=True)])
        if isinstance(node, exp.Anonymous) and node.name.lower() == "to_seconds":
            return exp.Anonymous(this="make_dt_interval", expressions=[
                exp.Literal.number(0), exp.Literal.number(0), exp.Literal.number(0),
                exp.cast(node.expressions[0], exp.DataType.build("DECIMAL(18, 6)"))])
        if isinstance(node, exp.Anonymous) and node.name.lower() == "timezone":
            return _utc_view(node)
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.INT128:
            return exp.DataType.build("DECIMAL(38, 0)")
        if isinstance(node, exp.TimeToStr) and isinstance(node.args.get("format"), exp.Literal):
            return exp.Anonymous(this="date_format", expressions=[
                node.this, exp.Literal.string(_java_time_format(node.args["format"].name))])
        if isinstance(node, exp.Filter) and isinstance(node.this, (exp.ArgMax, exp.ArgMin)) and node.this.args.get("count"):
            return _top_n(node.this, node.expression)
        if isinstance(node, (exp.ArgMax, exp.ArgMin)) and node.args.get("count"):
            return _top_n(node, None)
        if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
            return _sorted_list(node.this)
        if isinstance(node, exp.PercentileCont) and node.expression is not None:
            # DuckDB's quantile_cont(x, q) interpolates linearly between the closest ranks, as Spark's percentile does
            return exp.Anonymous(this="percentile", expressions=[node.this, node.expression])
        if isinstance(node, exp.Format):
            return _spark_format(node)
        if isinstance(node, exp.Anonymous) and node.name.lower() == "formatreadabledecimalsize":
            return _spark_expression(_READABLE_SIZE, node.expressions[0])
        return node

    # a rewrite hides its node's arguments from the same pass: repeat until nothing is left to rewrite
    tree = tree.transform(inline)
    for _ in range(8):
        rewritten = tree.transform(spark_functions)
        if rewritten == tree:
            break
        tree = rewritten
    return tree.sql(dialect="spark")


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


def python_value(value: Any) -> Any:
    """A Spark value as DuckDB's Python client gives it: a struct as a dict (Spark's Row is a tuple),
    lists of them likewise, a naive datetime in the session zone (UTC) as an aware one."""
    from pyspark.sql import Row

    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if isinstance(value, Row):
        return {k: python_value(v) for k, v in value.asDict(recursive=False).items()}
    if isinstance(value, list):
        return [python_value(v) for v in value]
    if isinstance(value, dict):
        return {k: python_value(v) for k, v in value.items()}
    return value


class SparkResult:
    """The rows of one statement, read as from a DuckDB cursor (values as `python_value` gives them)."""

    def __init__(self, rows: list[Any], columns: list[str]):
        self.rows = rows
        self.description = [(name,) for name in columns]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(python_value(v) for v in row) for row in self.rows]


class SparkConnection:
    """The part of a DuckDB connection that a build of temp tables uses (`execute`, `register`), on
    Spark, so that one sequence of steps runs on either engine (features/sessions.py).

    Each statement is DuckDB SQL with `$name` parameters, transpiled by `to_spark_sql`. A
    `CREATE [OR REPLACE] TEMP TABLE name AS SELECT …` becomes a temp view over the result,
    checkpointed: the next step reads it rather than recomputing the chain of steps before it.
    `dialect` tells a step which engine it writes for where the two need different SQL.
    """

    dialect = "spark"

    def __init__(self, spark):
        self.spark = spark
        self.tables: dict[str, Any] = {}

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> SparkResult:
        tree = sqlglot.parse_one(sql, read="duckdb")
        if isinstance(tree, exp.Create) and tree.kind == "TABLE" and isinstance(tree.expression, exp.Query):
            frame = self.spark.sql(to_spark_sql(tree.expression.sql(dialect="duckdb"), params or {}))
            self._keep(tree.this.name, frame.localCheckpoint(eager=True))
            return SparkResult([], [])
        frame = self.spark.sql(to_spark_sql(sql, params or {}))
        return SparkResult(frame.collect(), frame.columns)

    def register(self, name: str, table) -> None:
        """A pyarrow table as the view `name`."""
        self._keep(name, self.spark.createDataFrame(table))

    def unregister(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)
        self.tables.pop(name, None)

    def table_arrow(self, name: str):
        """The rows of temp table `name` as a pyarrow table (to hand to DuckDB)."""
        return self.tables[name].toArrow()

    def close(self) -> None:
        for name in list(self.tables):
            self.tables.pop(name).unpersist()
            self.spark.catalog.dropTempView(name)

    def _keep(self, name: str, frame) -> None:
        frame.createOrReplaceTempView(name)
        self.tables[name] = frame
