"""The ``dlabel`` command line."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import click

from schemas.config import load_config
from schemas.errors import DlabelError

BROKER_HELP = "kafka://host:port of the cluster (overrides the config; env DLABEL_BROKER)"


def _config(path: str, broker: Optional[str], check_broker: bool = True):
    from streams.kafka import clients as kafka_clients
    try:
        cfg = load_config(path, broker=broker)
        kafka_clients.configure(cfg.kafka)
        if check_broker:  # a refused TLS or SASL login fails here, naming the cause
            kafka_clients.check_connection(cfg.bootstrap_servers)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    return cfg


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log at INFO")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              envvar="DLABEL_LOG_FORMAT", help="text (default) or one JSON object per line")
def main(verbose: bool, log_format: Optional[str]) -> None:
    """dlabel: label inference requests with their feedback, on Kafka."""
    from streams.common.logs import setup_logging
    setup_logging(logging.INFO if verbose else logging.WARNING, log_format)


@main.command()
@click.option("--port", default=9092, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--engine", type=click.Choice(["tansu", "kafka"]), default="tansu",
              show_default=True,
              help="tansu: the embedded broker (in memory, no Java); kafka: a single-node "
                   "Apache Kafka (KRaft) from the official jars (Java 17+; Maven fetches "
                   "the jars once)")
def broker(port: int, host: str, engine: str) -> None:
    """Run a broker in the foreground until Ctrl-C or SIGTERM: the embedded Tansu broker,
    or Apache Kafka with --engine kafka."""
    if engine == "kafka":
        from streams.kafka.kafka_broker import run_foreground as run_kafka
        sys.exit(run_kafka(port=port, host=host))
    from streams.kafka.broker import run_foreground
    sys.exit(run_foreground(port=port, host=host))


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--broker", envvar="DLABEL_BROKER", help=BROKER_HELP)
@click.option("--drain", is_flag=True, help="exit once all input is consumed and finalized")
@click.option("--only", type=click.Choice(["join", "sink"]), default=None,
              help="run only the join worker or only the dataset sink (default: both)")
@click.option("--batch-size", default=2000, show_default=True)
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option("--metrics-port", type=int, default=None, envvar="DLABEL_METRICS_PORT",
              help="serve Prometheus metrics: the join on this port, the sink on the next")
@click.option("--guarantee", type=click.Choice(["auto", "exactly_once", "at_least_once"]),
              default="auto", show_default=True,
              help="labeled topic: auto = exactly once where the broker has transactions "
                   "(Apache Kafka and compatible), at least once on Tansu")
def worker(config_path: str, broker: Optional[str], drain: bool, only: Optional[str],
           batch_size: int, loglevel: str, metrics_port: Optional[int], guarantee: str) -> None:
    """Run the join worker (requests + feedback -> labeled) and the dataset sink
    (labeled -> Parquet windows -> windows topic)."""
    from streams.pipeline import run_pipeline
    cfg = _config(config_path, broker, check_broker=False)  # run_pipeline checks, after the PII key
    try:
        summary = run_pipeline(cfg, only=only, drain=drain, batch_size=batch_size,
                               loglevel=loglevel, metrics_port=metrics_port,
                               guarantee=guarantee)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(summary))


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--broker", envvar="DLABEL_BROKER", help=BROKER_HELP)
@click.option("--scenario", type=click.Choice(["ctr", "airport"]), default="ctr", show_default=True)
@click.option("--requests", "n_requests", default=1000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["dlabel", "ecs", "fluentd"]), default="dlabel",
              show_default=True,
              help="shape of the events: dlabel (flat, keyed by request id), ecs (as "
                   "Filebeat/Logstash ship them) or fluentd (time in epoch seconds); ecs and "
                   "fluentd are unkeyed and need a config with the matching inputs: section "
                   "(examples/ctr-ecs.yaml, examples/ctr-fluentd.yaml)")
def simulate(config_path: str, broker: Optional[str], scenario: str, n_requests: int, seed: int,
             fmt: str) -> None:
    """Produce realistic simulated requests and feedback to the pipeline's topics."""
    from streams.dev.event_shapes import mismatch, reshape
    from streams.dev.simulate import generate, produce
    cfg = _config(config_path, broker)
    why = mismatch(fmt, cfg)
    if why is not None:  # still produced: seeing the dead letters is a lesson too
        example = "examples/ctr.yaml" if fmt == "dlabel" else f"examples/ctr-{fmt}.yaml"
        click.echo(f"warning: {config_path} does not read the {fmt} format ({why}); the "
                   f"worker will dead-letter these events. Use the inputs: section of "
                   f"{example}", err=True)
    try:
        events = reshape(generate(cfg, scenario, n_requests, seed), cfg, fmt)
        n = produce(cfg.bootstrap_servers, cfg, events)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    shape = "" if fmt == "dlabel" else f" in the {fmt} format"
    click.echo(f"produced {n} events ({n_requests} requests){shape} to {cfg.bootstrap_servers}")


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--broker", envvar="DLABEL_BROKER", help=BROKER_HELP)
@click.option("--topic", type=click.Choice(["labeled", "dead_letter", "requests", "feedback", "windows"]),
              default="labeled", show_default=True)
@click.option("-n", "--max-records", default=0, help="stop after this many (0: follow until Ctrl-C)")
@click.option("--timeout", default=0.0, help="stop after this many idle seconds (0: never)")
def tail(config_path: str, broker: Optional[str], topic: str, max_records: int, timeout: float) -> None:
    """Print records of one of the pipeline's topics, from the beginning."""
    from streams.dev.tail import tail_topic
    cfg = _config(config_path, broker)
    name = getattr(cfg.topics, topic)
    for record in tail_topic(cfg.bootstrap_servers, name, max_records, timeout):
        click.echo(record)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="print JSON (one object per window)")
def datasets(config_path: str, as_json: bool) -> None:
    """List the dataset's windows: status, rows, label rate, files (from the manifests)."""
    from streams.common.storage import open_storage
    from streams.dataset.manifest import list_windows
    cfg = _config(config_path, None, check_broker=False)
    try:
        windows = list_windows(open_storage(cfg.dataset.path))
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(windows, indent=2))
        return
    if not windows:
        click.echo(f"no windows under {cfg.dataset.path}")
        return
    click.echo(f"{'window_start':<22} {'status':<7} {'rows':>8} {'label rate':>10} {'files':>5}"
               f" {'ver':>3} {'join':>6} {'delay p50/p90/p99 s':>20} {'late10%':>7} "
               f"{'fixes':>5}")
    for w in windows:
        rows = "" if w["rows"] is None else str(w["rows"])
        rate = "" if w["label_rate"] is None else f"{w['label_rate']:.3f}"
        st = w.get("stats") or {}
        ratio = "" if st.get("join_ratio") is None else f"{st['join_ratio']:.3f}"
        q = st.get("label_delay_ms")
        delay = "" if not q else "/".join(f"{q[k] / 1000:.1f}" for k in ("p50", "p90", "p99"))
        late = ("" if st.get("late_in_window_share") is None
                else f"{st['late_in_window_share']:.3f}")
        click.echo(f"{w['window_start']:<22} {w['status']:<7} {rows:>8} {rate:>10} "
                   f"{w['files']:>5} {w.get('version') or '':>3} {ratio:>6} {delay:>20} "
                   f"{late:>7} {st.get('corrections', ''):>5}")


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--broker", envvar="DLABEL_BROKER", help=BROKER_HELP)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--no-broker", is_flag=True, help="leave out lag and watermark (no broker needed)")
def status(config_path: str, broker: Optional[str], as_json: bool, no_broker: bool) -> None:
    """One screen for an operator: lag, watermark, windows, jobs, champion."""
    from streams.status import collect_status, format_status
    cfg = _config(config_path, broker, check_broker=not no_broker)
    try:
        s = collect_status(cfg, broker=not no_broker)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(s, indent=2, default=str) if as_json else format_status(s))


@main.command()
@click.option("--requests", "n_requests", default=24000, show_default=True,
              help="requests over one simulated day")
@click.option("--seed", default=1, show_default=True)
@click.option("--scenario", type=click.Choice(["ctr", "airport"]), default="ctr", show_default=True)
@click.option("--workdir", default="dlabel-demo", show_default=True, type=click.Path())
def demo(n_requests: int, seed: int, scenario: str, workdir: str) -> None:
    """End-to-end demo on an embedded broker: a simulated day of traffic, labeled,
    written as hourly Parquet windows, retrained window by window, reported."""
    from streams.dev.demo import run_demo
    os.environ.setdefault("DLABEL_PII_KEY", "demo-key-not-secret")
    try:
        run_demo(scenario, n_requests, seed, workdir, echo=click.echo)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None


def _register_jobs_commands() -> None:
    from jobs.cli import jobs, models, report, retrain
    for command in (jobs, retrain, models, report):
        main.add_command(command)


_register_jobs_commands()

if __name__ == "__main__":
    main()
