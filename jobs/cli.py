"""Click commands of the retraining side: ``jobs``, ``retrain``, ``models``, ``report``.

Registered on the main group in ``streams/cli.py`` (``main.add_command(...)``).
"""
from __future__ import annotations

import json
from typing import Optional

import click

from schemas.config import load_config
from schemas.errors import DlabelError

BROKER_HELP = "kafka://host:port of the cluster (overrides the config; env DLABEL_BROKER)"
config_option = click.option("-c", "--config", "config_path", required=True,
                             type=click.Path(exists=True))


def _config(path: str, broker: Optional[str] = None):
    try:
        return load_config(path, broker=broker)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None


@click.command()
@config_option
@click.option("--broker", envvar="DLABEL_BROKER", help=BROKER_HELP)
@click.option("--until-idle", is_flag=True,
              help="run the pending windows, then exit once the windows topic is idle")
@click.option("--idle-timeout", default=2.0, show_default=True,
              help="seconds without a windows event that count as idle")
@click.option("--retry-failed", is_flag=True, help="also retry windows recorded as failed")
@click.option("--metrics-port", type=int, default=None, envvar="DLABEL_METRICS_PORT",
              help="serve Prometheus metrics on this port")
def jobs(config_path: str, broker: Optional[str], until_idle: bool, idle_timeout: float,
         retry_failed: bool, metrics_port: Optional[int]) -> None:
    """Run one retraining job per closed window (windows topic), in window order."""
    from jobs.runner import run_forever, run_until_idle
    from streams.kafka import clients as kafka_clients
    from streams.common import metrics
    cfg = _config(config_path, broker)
    kafka_clients.configure(cfg.kafka)
    try:  # a refused TLS or SASL login fails here, naming the cause
        kafka_clients.check_connection(cfg.bootstrap_servers)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    metrics.serve(metrics_port, "jobs runner")
    from streams.kafka.probe import BrokerProbe
    probe = BrokerProbe(cfg.bootstrap_servers).start()
    try:
        if until_idle:
            summary = run_until_idle(cfg, idle_s=idle_timeout, retry_failed=retry_failed,
                                     echo=click.echo)
        else:
            click.echo(f"following {cfg.topics.windows} on {cfg.bootstrap_servers} (Ctrl-C stops)")
            try:
                summary = run_forever(cfg, idle_s=min(idle_timeout, 1.0),
                                      retry_failed=retry_failed, echo=click.echo)
            except KeyboardInterrupt:
                return
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    finally:
        probe.stop()
    click.echo(json.dumps(summary.as_dict()))
    if summary.failed:
        raise SystemExit(1)


@click.command()
@config_option
@click.option("--window", help="the window start, e.g. 2026-11-27T10:00:00Z")
@click.option("--from", "from_", help="backfill: first window start (inclusive)")
@click.option("--to", help="backfill: last window start (exclusive; default: all after --from)")
def retrain(config_path: str, window: Optional[str], from_: Optional[str],
            to: Optional[str]) -> None:
    """Retrain on one closed window by hand, or backfill a range of them in order."""
    from rich.progress import Progress
    from jobs.dataset import closed_windows, parse_window, window_iso
    from jobs.job import run_job
    cfg = _config(config_path)
    if bool(window) == bool(from_):
        raise click.UsageError("give either --window W or --from W [--to W]")
    try:
        if window:
            starts = [parse_window(window)]
        else:
            lo = parse_window(from_)
            hi = parse_window(to) if to else None
            starts = [w for w in closed_windows(cfg.dataset.path)
                      if w >= lo and (hi is None or w < hi)]
            if not starts:
                raise click.ClickException(f"no closed windows in [{from_}, {to or '...'}) under "
                                           f"{cfg.dataset.path}")
        failed = 0
        with Progress(transient=False) as progress:
            task = progress.add_task("retraining", total=len(starts))
            for start in starts:
                name = window_iso(start)
                progress.update(task, description=name)
                try:
                    rec = run_job(cfg, start)
                    progress.console.print(f"{name}: {rec['status']} {rec.get('version') or ''}"
                                           f"{' (promoted)' if rec.get('promoted') else ''}")
                except DlabelError as e:
                    failed += 1
                    progress.console.print(f"[red]{name}: failed: {e}[/red]")
                progress.advance(task)
    except DlabelError as e:
        raise click.ClickException(str(e)) from None
    if failed:
        raise click.ClickException(f"{failed} of {len(starts)} window(s) failed")


@click.command()
@config_option
@click.argument("action", type=click.Choice(["list", "show", "promote", "rollback", "serving"]),
                default="list")
@click.argument("version", required=False)
def models(config_path: str, action: str, version: Optional[str]) -> None:
    """The model registry: list | show N | promote N | rollback | serving (the serving
    model: the champion or its latest in-window update)."""
    from jobs.registry import Registry
    cfg = _config(config_path)
    reg = Registry(cfg.model.path, cfg.model.trusted_types)
    try:
        if action in ("show", "promote") and not version:
            raise click.UsageError(f"`models {action}` needs a version, e.g. {action} 3")
        if action == "list":
            champion = reg.champion()
            metric = cfg.model.promotion.metric
            click.echo(f"{'version':<9}{'window':<22}{'parent':<8}"
                       f"{metric + ' gain [interval]':>32}  promoted")
            for v in reg.versions():
                lin, m = reg.lineage(v), reg.metrics(v)
                d = m["decision"]
                promoted = d.get("promotes_version", v) if d["promote"] else "-"
                click.echo(f"{v:<9}{lin['window']:<22}{lin.get('parent') or '-':<8}"
                           f"{gain_text(d):>32}  {promoted}"
                           f"{'  <- champion' if v == champion else ''}")
        elif action == "show":
            name = reg.normalize(version)
            reg.load(name)  # verifies the checksum and types
            click.echo(json.dumps({"version": name, "champion": reg.champion() == name,
                                   "lineage": reg.lineage(name), "metrics": reg.metrics(name)},
                                  indent=1))
        elif action == "promote":
            name = reg.normalize(version)
            reg.load(name)
            reg.set_champion(name, reason="promoted by hand")
            click.echo(f"champion is now {name}")
        elif action == "serving":
            from jobs.serving import ServingStore
            store = ServingStore(cfg.model.path, cfg.model.trusted_types)
            ptr = store.pointer()
            name = store.load(reg)[0]  # verifies what serving.json names
            record = store.update_record(name) if ptr and ptr.get("dir") else None
            click.echo(json.dumps({"serving": name, "champion": reg.champion(),
                                   "pointer": ptr, "update": record}, indent=1))
        else:
            click.echo(f"champion is now {reg.rollback()}")
    except DlabelError as e:
        raise click.ClickException(str(e)) from None


@click.command()
@config_option
@click.option("-o", "--out", type=click.Path(),
              help="output directory (default <model.path>/report)")
def report(config_path: str, out: Optional[str]) -> None:
    """Write the HTML retraining report with its charts; prints its path."""
    from jobs.report import write_report
    cfg = _config(config_path)
    click.echo(str(write_report(cfg, out)))


def gain_text(decision: dict) -> str:
    """A decision's gain and its interval, e.g. ``+0.0123 [-0.0040, +0.0290] 95%``."""
    gain, ci = decision.get("gain"), decision.get("gain_ci")
    if gain is None:
        return "-"
    text = f"{gain:+.4f}"
    if ci and decision.get("confidence"):
        text += f" [{ci[0]:+.4f}, {ci[1]:+.4f}] {decision['confidence']:.0%}"
    return text


COMMANDS = (jobs, retrain, models, report)
