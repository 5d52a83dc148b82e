"""Word count and PageRank with Spark local[N], for bench/mapreduce-compare.sh.

Usage: python3 mapreduce-spark.py wordcount INPUT OUTPUT [cores]
       python3 mapreduce-spark.py pagerank INPUT OUTPUT ITERATIONS [cores] [tolerance]
       python3 mapreduce-spark.py check-ranks SPARK_OUTPUT RANKS_DIR_OR_FILE MAX_DIFF
       python3 mapreduce-spark.py check-counts SPARK_OUTPUT COUNTS_DIR_OR_FILE

Both jobs use the DataFrame API, so the work runs in the JVM (Catalyst plans, Tungsten
rows): no Python function touches a record.

- Word count: split each line on ASCII whitespace (as synod's `words` does), explode,
  drop empty strings, group by word and count. Output: `word<TAB>count` lines.
- PageRank: the same rule as synod's job, r'(v) = (1-d)/N + d*(sum_{u->v} r(u)/outdeg(u)
  + D/N), with D the rank held by dangling nodes (no out-links) and every rank 1/N at the
  start; duplicate edges count once. Each iteration is one join of the edges with the
  ranks (by source) and a group-by on the destination, then a left join of every node with
  its sum; the L1 change comes from the same row (old and new rank), and the loop stops
  after ITERATIONS or when the change is below the tolerance, as synod's does. Each
  iteration's ranks are checkpointed locally (in executor memory/disk), which cuts the
  query plan so it does not grow with the iterations. Output: `node<TAB>rank` lines.

Settings for local[N] on a small machine: spark.sql.shuffle.partitions = 4*N (the default
200 makes hundreds of tiny tasks), adaptive execution on (Spark's default), 6 GiB of driver
memory (in local mode the driver is the executor), the UI off.

The check-* modes compare an output with synod's (no Spark needed): check-counts requires
the same lines; check-ranks requires the same nodes and every rank within MAX_DIFF.
"""
import os
import sys
import time


def read_lines(path):
    """The lines of a file, or of every part-* file in a directory."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.startswith("part-"))
        files = [os.path.join(path, n) for n in names]
    else:
        files = [path]
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.rstrip("\n")
                if line:
                    yield line


def check_counts(spark_out, synod_out):
    a = sorted(read_lines(spark_out))
    b = sorted(read_lines(synod_out))
    if a != b:
        missing = len(set(b) - set(a))
        extra = len(set(a) - set(b))
        sys.exit(f"word counts differ: {len(a)} vs {len(b)} lines, "
                 f"{missing} of synod's lines missing, {extra} extra")
    print(f"word counts equal: {len(a)} words")


def check_ranks(spark_out, synod_out, max_diff):
    def ranks(path):
        out = {}
        for line in read_lines(path):
            f = line.split("\t")
            out[int(f[0])] = float(f[1])
        return out

    a, b = ranks(spark_out), ranks(synod_out)
    if a.keys() != b.keys():
        sys.exit(f"node sets differ: {len(a)} vs {len(b)} nodes, "
                 f"{len(a.keys() ^ b.keys())} in one only")
    worst = max(abs(a[k] - b[k]) for k in a)
    if worst > max_diff:
        sys.exit(f"ranks differ by up to {worst:.3g} (allowed {max_diff:g})")
    print(f"ranks agree: {len(a)} nodes, largest difference {worst:.3g}")


def jvm_cpu_seconds(spark):
    """User + system CPU seconds the JVM (driver and executor in local mode) has used."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat (utime, stime), counted after the ") " of the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session(job, cores):
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(f"local[{cores}]")
            .appName(f"synod-bench-{job}")
            .config("spark.driver.memory", "6g")
            .config("spark.sql.shuffle.partitions", str(4 * int(cores)))
            .config("spark.sql.adaptive.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate())


def wordcount(spark, inp, out):
    from pyspark.sql import functions as F

    words = (spark.read.text(inp)
             .select(F.explode(F.split("value", "[ \t\n\f\r]+")).alias("word"))
             .where(F.col("word") != ""))
    counts = words.groupBy("word").count()
    (counts.select(F.concat_ws("\t", "word", F.col("count").cast("string")))
     .write.text(out))


def pagerank(spark, inp, out, iterations, tolerance):
    from pyspark.sql import functions as F

    d = 0.85
    parts = F.split(F.trim(F.col("value")), "[ \t]+")
    edges = (spark.read.text(inp)
             .select(parts.getItem(0).cast("long").alias("src"),
                     parts.getItem(1).cast("long").alias("dst"))
             .where(F.col("src").isNotNull() & F.col("dst").isNotNull())
             .distinct()
             .cache())
    degrees = edges.groupBy("src").agg(F.count("*").alias("deg"))
    nodes = (edges.select(F.col("src").alias("id"))
             .union(edges.select(F.col("dst").alias("id"))).distinct())
    # Every node with 1/outdeg (null for a dangling node) and its rank.
    ranks = (nodes.join(degrees, nodes.id == degrees.src, "left")
             .select("id", (F.lit(1.0) / F.col("deg")).alias("inv_deg"))
             .localCheckpoint())
    n = ranks.count()
    ranks = ranks.withColumn("rank", F.lit(1.0 / n))
    done = 0
    while done < iterations:
        done += 1
        dangling = (ranks.where(F.col("inv_deg").isNull())
                    .agg(F.sum("rank")).first()[0]) or 0.0
        sums = (edges.join(ranks.select(F.col("id").alias("src"),
                                        (F.col("rank") * F.col("inv_deg")).alias("share")),
                           "src")
                .groupBy("dst").agg(F.sum("share").alias("s")))
        new = (ranks.join(sums, ranks.id == sums.dst, "left")
               .select("id", "inv_deg",
                       F.col("rank").alias("old"),
                       (F.lit((1 - d) / n)
                        + F.lit(d) * (F.coalesce(F.col("s"), F.lit(0.0))
                                      + F.lit(dangling / n))).alias("rank"))
               .localCheckpoint())
        delta = new.agg(F.sum(F.abs(F.col("rank") - F.col("old")))).first()[0]
        ranks = new.drop("old")
        if delta < tolerance:
            break
    (ranks.select(F.concat_ws("\t", F.col("id").cast("string"),
                              F.col("rank").cast("string")))
     .write.text(out))
    print(f"pagerank: {n} nodes, {done} iterations")


def main():
    a = sys.argv
    if len(a) < 4:
        sys.exit(__doc__)
    job, inp, out = a[1], a[2], a[3]
    if job == "check-counts":
        return check_counts(inp, out)
    if job == "check-ranks":
        return check_ranks(inp, out, float(a[4]))
    if job == "wordcount":
        cores = a[4] if len(a) > 4 else "2"
    elif job == "pagerank":
        iterations = int(a[4])
        cores = a[5] if len(a) > 5 else "2"
        tolerance = float(a[6]) if len(a) > 6 else 1e-300
    else:
        sys.exit(f"unknown job {job!r}\n{__doc__}")
    spark = session(job, cores)
    spark.sparkContext.setLogLevel("ERROR")
    t = time.time()
    if job == "wordcount":
        wordcount(spark, inp, out)
    else:
        pagerank(spark, inp, out, iterations, tolerance)
    wall = time.time() - t
    # The JVM is pyspark's child but not waited for, so /usr/bin/time does not count it:
    # its CPU seconds (user + system, all threads) come from /proc.
    cpu = jvm_cpu_seconds(spark)
    print(f"spark {job}: {wall:.2f} s (local[{cores}])")
    spark.stop()
    print(f"jvm_cpu_seconds {cpu:.2f}")


if __name__ == "__main__":
    main()
