"""Apache Flink (PyFlink, local mini-cluster) running the same windowed count as
`synod bench stream`: keyed 1 s tumbling event-time windows, 10,000 keys, 50 ms watermark
bound, parallelism 2, exactly-once checkpoints every second (or off).

The whole job runs in the JVM (Flink SQL with the datagen source and the blackhole sink), so
no Python code is on the per-record path.

usage: python stream_flink.py EVENTS [on|off]
"""

import sys
import time

from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment

events = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000_000
checkpoints = (sys.argv[2] if len(sys.argv) > 2 else "on") == "on"

config = Configuration()
config.set_string("parallelism.default", "2")
config.set_string("taskmanager.numberOfTaskSlots", "2")
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

start = time.time()
t_env.execute_sql("""
INSERT INTO counts
SELECT k, window_end, COUNT(*) FROM TABLE(
  TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY k, window_start, window_end""").wait()
elapsed = time.time() - start
print(f"flink checkpoints {'on' if checkpoints else 'off'}: {events} records in {elapsed:.2f} s "
      f"= {events / elapsed:.0f} records/s (includes job start-up)")
