"""The data each step reads and writes: Airflow Assets (so other DAGs can be scheduled
on fresh data) and OpenLineage datasets with the counts of the step's summary; named
from the settings, never with credentials."""

from __future__ import annotations

import os


def without_auth(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL, without user, password, query or fragment
    (an Asset URI or a lineage namespace must carry no credentials). Never raises: a URL
    that does not parse unambiguously (a password holding ``/ ? # :`` unencoded, a port
    that is not a number) gives ``scheme://unparseable``, so the DAG still imports and
    shows no fragment of it; the step itself then fails with the binary's clear error."""
    from urllib.parse import urlsplit

    scheme = url.partition("://")[0] if "://" in url else "unknown"
    try:
        parts = urlsplit(url)
        port = parts.port
        ambiguous = "@" in parts.path or bool(parts.fragment)
    except ValueError:
        ambiguous, parts, port = True, None, None
    if ambiguous or parts is None:
        return f"{scheme}://unparseable"
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port else host
    # Written out by hand: urlunsplit drops the "//" of an empty host (duckdb:///path).
    return f"{parts.scheme}://{netloc}{parts.path}"


def step_assets() -> dict[str, object]:
    """The data each step reads and writes, as Airflow Assets, so other DAGs can be
    scheduled on fresh data: the lake's daily files, the raw and deduplicated warehouse
    tables, and the MySQL serving table. Each is identified by its URI, from the settings
    without credentials (a fixed name would clash when two deployments, or a changed
    setting, give it two URIs: Airflow then marks it inactive and fails the task)."""
    from airflow.sdk import Asset

    lake = os.environ.get("OTA_LAKE_URL", "file:///data/lake")
    warehouse = without_auth(os.environ.get("OTA_WAREHOUSE_URL", "duckdb:///data/warehouse.duckdb")).rstrip("/")
    mysql = without_auth(
        os.environ.get("OTA_MYSQL_ASSET_URL") or os.environ.get("OTA_MYSQL_URL") or "mysql://mysql:3306/ota"
    )
    table = os.environ.get("OTA_MYSQL_TABLE", "ota_events")
    return {
        "lake": Asset(uri=without_auth(lake), group="ota"),
        "raw": Asset(uri=f"{warehouse}/raw_events", group="ota"),
        "dedup": Asset(uri=f"{warehouse}/dedup_events", group="ota"),
        "mysql": Asset(uri=f"{mysql.rstrip('/')}/{table}", group="ota"),
    }


# What each step reads (inlets) and writes (outlets), by step_assets() key.
LINEAGE = {
    "stage_files": (["lake"], []),
    "load_raw": (["lake"], ["raw"]),
    "dedup": (["raw"], ["dedup"]),
    "export_mysql": (["dedup"], ["mysql"]),
    "reconcile": (["dedup", "mysql"], []),
}


def lineage_datasets() -> dict[str, tuple[str, str]]:
    """The steps' data as OpenLineage datasets, (namespace, name) by step_assets() key,
    named as OpenLineage names them: ``file`` and a path, ``gs://bucket`` and a prefix,
    ``bigquery`` and ``project.dataset.table``, ``mysql://host:port`` and ``db.table``;
    an embedded warehouse is its URL and the table."""
    from urllib.parse import urlsplit

    lake = urlsplit(without_auth(os.environ.get("OTA_LAKE_URL", "file:///data/lake")))
    warehouse_url = without_auth(os.environ.get("OTA_WAREHOUSE_URL", "duckdb:///data/warehouse.duckdb")).rstrip("/")
    warehouse = urlsplit(warehouse_url)
    mysql = urlsplit(
        without_auth(
            os.environ.get("OTA_MYSQL_ASSET_URL") or os.environ.get("OTA_MYSQL_URL") or "mysql://mysql:3306/ota"
        )
    )
    table = os.environ.get("OTA_MYSQL_TABLE", "ota_events")

    def in_warehouse(name: str) -> tuple[str, str]:
        if warehouse.scheme == "bigquery":
            return "bigquery", f"{warehouse.netloc}.{warehouse.path.strip('/')}.{name}"
        return warehouse_url, name

    if lake.scheme == "file":
        lake_dataset = ("file", lake.path)
    else:
        lake_dataset = (f"{lake.scheme}://{lake.netloc}", lake.path.strip("/"))
    return {
        "lake": lake_dataset,
        "raw": in_warehouse("raw_events"),
        "dedup": in_warehouse("dedup_events"),
        "mysql": (f"mysql://{mysql.netloc}", f"{mysql.path.strip('/')}.{table}"),
    }


def step_lineage(step: str, summary: dict | None):
    """OpenLineage facets of a finished step, for the OpenLineage provider where it is
    installed: the datasets it read and wrote, with the rows and files the summary counts
    (``inputStatistics``, ``outputStatistics``), and the summary's status, window and
    counts as the run facet ``ota_step``."""
    import attr
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import RunFacet, input_statistics_input_dataset, output_statistics_output_dataset

    @attr.define
    class OtaStepRunFacet(RunFacet):
        step: str
        status: str
        window: dict | None
        counts: dict

    summary = summary or {}
    counts = summary.get("counts") or {}
    datasets = lineage_datasets()
    inlets, outlets = LINEAGE[step]
    inputs = []
    for key in inlets:
        facets = {}
        if key == "lake" and step in ("stage_files", "load_raw"):
            files = summary.get("files_loaded", summary.get("files"))
            facets["inputStatistics"] = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                rowCount=counts.get("rows_read") if step == "load_raw" else None,
                fileCount=len(files) if isinstance(files, list) else None,
            )
        inputs.append(InputDataset(namespace=datasets[key][0], name=datasets[key][1], inputFacets=facets))
    outputs = [
        OutputDataset(
            namespace=datasets[key][0],
            name=datasets[key][1],
            outputFacets={
                "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=int(counts.get("rows_written") or 0)
                )
            },
        )
        for key in outlets
    ]
    run_facets = {}
    if summary:
        run_facets["ota_step"] = OtaStepRunFacet(
            step=str(summary.get("step", step)),
            status=str(summary.get("status", "")),
            window=summary.get("window"),
            counts=counts,
        )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)
