"""`dlabel worker` must not go on without its dataset sink.

The sink runs as a child process of `dlabel worker`. When that child dies (SIGKILL, the
OOM killer), the worker has to notice: exit (so that its supervisor - systemd, the
container runtime, Kubernetes - restarts it, sink included) or start a new sink.
Otherwise the join keeps labeling, the Parquet dataset silently stops growing, no window
closes and no job runs, while the worker looks healthy to any supervisor.

The worker exits (found missing by the fault runs of ``test_faults``, fixed in
``streams.pipeline``): its summary says the sink stopped, with a non-zero status.
"""
from __future__ import annotations

import pytest

from streams.dev.simulate import generate, produce
from streams.kafka.topics import ensure_topics
from tests.fault_probes import sigkill, sink_child, wait_join_caught_up, wait_until
from tests.pipeline_runs import kill_group, load, start_worker, write_pipeline

pytestmark = [pytest.mark.broker, pytest.mark.faults]


@pytest.mark.timeout(600)
def test_worker_does_not_go_on_without_its_sink(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=2)
    cfg = load(path)
    events = generate(cfg, "ctr", 2000, seed=31, rate_per_s=0.5)
    half = len(events) // 2
    ensure_topics(broker.bootstrap, cfg)
    produce(broker.bootstrap, cfg, events[:half])
    worker = start_worker(path, tmp_path / "worker.log")
    try:
        wait_join_caught_up(broker.bootstrap, cfg, "the worker is up", alive={"worker": worker})
        sink = wait_until(lambda: sink_child(worker.pid), 60, "the sink child")
        sigkill([sink])
        produce(broker.bootstrap, cfg, events[half:])  # the join has more to label
        # what a supervisor needs: the worker exits, or a new sink takes the dead one's place
        wait_until(lambda: worker.poll() is not None or sink_child(worker.pid) not in (None, sink),
                   120, "the worker exited or started a new sink after its sink died")
        assert worker.wait(60) != 0
        assert "the dataset sink" in (tmp_path / "worker.log").read_text(errors="replace")
    finally:
        if worker.poll() is None:
            kill_group(worker)
