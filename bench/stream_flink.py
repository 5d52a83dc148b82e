"""Apache Flink (PyFlink, local mini-cluster) running the same windowed count as
`synod bench stream`: keyed 1 s tumbling event-time windows, 10,000 keys, 50 ms watermark
bound, parallelism 2, exactly-once checkpoints every second (or off).

The whole job runs in the JVM (Flink SQL with the datagen source and the blackhole sink), so
no Python code is on the per-record path.

usage:
  python stream_flink.py EVENTS [on|off]          run EVENTS records to the end (wall time
                                                  includes the job's start-up)
  python stream_flink.py --seconds S [on|off]     run for S seconds of record flow and report
                                                  the steady-state rate from the job's own
                                                  counters (the source vertex's write-records,
                                                  read through the mini-cluster's REST API),
                                                  leaving out the first 10 s, and the JVM's
                                                  CPU-seconds over the same interval
"""

import json
import os
import socket
import sys
import time
import urllib.request

from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment

args = sys.argv[1:]
seconds = None
if args and args[0] == "--seconds":
    seconds = float(args[1])
    args = args[2:]
    events = 10**12
else:
    events = int(args[0]) if args else 20_000_000
    args = args[1:]
checkpoints = (args[0] if args else "on") == "on"

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    rest_port = s.getsockname()[1]

config = Configuration()
config.set_string("parallelism.default", "2")
config.set_string("taskmanager.numberOfTaskSlots", "2")
config.set_string("rest.port", str(rest_port))
config.set_string("rest.address", "127.0.0.1")
config.set_string("rest.bind-address", "127.0.0.1")
if os.environ.get("FLINK_QUERY") == "passthrough":
    # The source's own vertex, so that its write-records counts what it emits.
    config.set_string("pipeline.operator-chaining.enabled", "false")
if os.environ.get("FLINK_MINIBATCH") == "1":
    # Flink's tuning for aggregations: buffer input and update state once per key.
    config.set_string("table.exec.mini-batch.enabled", "true")
    config.set_string("table.exec.mini-batch.allow-latency", "100 ms")
    config.set_string("table.exec.mini-batch.size", "5000")
if checkpoints:
    config.set_string("execution.checkpointing.interval", "1s")
    config.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(config).build()
t_env = TableEnvironment.create(settings)

t_env.execute_sql(f"""
CREATE TABLE clicks (
  k BIGINT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '0.05' SECOND
) WITH (
  'connector' = 'datagen',
  'number-of-rows' = '{events}',
  'rows-per-second' = '1000000000',
  'fields.k.min' = '0',
  'fields.k.max' = '9999',
  'fields.ts.max-past' = '50'
)""")
t_env.execute_sql("""
CREATE TABLE counts (k BIGINT, window_end TIMESTAMP(3), n BIGINT)
WITH ('connector' = 'blackhole')""")

QUERY = """
INSERT INTO counts
SELECT k, window_end, COUNT(*) FROM TABLE(
  TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY k, window_start, window_end"""
if os.environ.get("FLINK_QUERY") == "passthrough":
    # Diagnostic: the same source and sink without the window, to see what the source costs.
    QUERY = "INSERT INTO counts SELECT k, ts, k FROM clicks"
mode = "on" if checkpoints else "off"

if seconds is None:
    start = time.time()
    t_env.execute_sql(QUERY).wait()
    elapsed = time.time() - start
    print(f"flink checkpoints {mode}: {events} records in {elapsed:.2f} s "
          f"= {events / elapsed:.0f} records/s (includes job start-up)")
    sys.exit(0)


def jvm_cpu_seconds():
    """utime + stime of this process's children (the JVM that PyFlink started)."""
    total = 0.0
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == me:
            total += (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    return total


def source_records(job_id):
    url = f"http://127.0.0.1:{rest_port}/jobs/{job_id}"
    with urllib.request.urlopen(url, timeout=5) as r:
        job = json.load(r)
    for v in job.get("vertices", []):
        if v["name"].startswith("Source"):
            return v["metrics"]["write-records"], job.get("state")
    return 0, job.get("state")


submitted = time.time()
result = t_env.execute_sql(QUERY)
job_id = str(result.get_job_client().get_job_id())
samples = []  # (wall time, records, JVM CPU seconds)
flowing = None
while True:
    time.sleep(1.0)
    try:
        n, state = source_records(job_id)
    except OSError:
        continue
    now = time.time()
    samples.append((now, n, jvm_cpu_seconds()))
    if n > 0 and flowing is None:
        flowing = now
    if flowing is not None and now - flowing >= seconds:
        break
    if state not in (None, "RUNNING", "CREATED", "INITIALIZING"):
        break
result.get_job_client().cancel().result()
# Steady state: from 10 s after records started to flow, to the end.
steady = [s for s in samples if flowing is not None and s[0] >= flowing + 10]
if len(steady) < 2:
    print(f"flink checkpoints {mode}: too few samples")
    sys.exit(1)
(t0, n0, c0), (t1, n1, c1) = steady[0], steady[-1]
rate = (n1 - n0) / (t1 - t0)
cpu_ns = (c1 - c0) * 1e9 / max(n1 - n0, 1)
print(f"flink checkpoints {mode}: steady {rate:.0f} records/s over {t1 - t0:.1f} s "
      f"({n1 - n0} records; source write-records), {cpu_ns:.0f} CPU ns/record; "
      f"first record {flowing - submitted:.1f} s after submission; {n1} records in all")
