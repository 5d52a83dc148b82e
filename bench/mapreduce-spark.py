"""Word count and PageRank with Spark local[N], for bench/mapreduce-compare.sh.

Usage: python3 mapreduce-spark.py wordcount INPUT OUTPUT [cores]
       python3 mapreduce-spark.py pagerank INPUT OUTPUT ITERATIONS [cores]

PageRank uses the same formula as synod's job: r'(v) = (1-d)/N + d*(sum + D/N), with D the
rank held by dangling nodes, for a fixed number of iterations.
"""
import sys
import time
from operator import add

from pyspark import SparkConf, SparkContext


def main():
    job, inp, out = sys.argv[1], sys.argv[2], sys.argv[3]
    cores = sys.argv[5] if job == "pagerank" and len(sys.argv) > 5 else (
        sys.argv[4] if job == "wordcount" and len(sys.argv) > 4 else "2")
    conf = (SparkConf().setMaster(f"local[{cores}]").setAppName(f"synod-bench-{job}")
            .set("spark.driver.memory", "4g").set("spark.ui.enabled", "false"))
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    t = time.time()
    if job == "wordcount":
        (sc.textFile(inp).flatMap(lambda l: l.split()).map(lambda w: (w, 1))
         .reduceByKey(add).saveAsTextFile(out))
    else:
        iterations = int(sys.argv[4])
        d = 0.85
        edges = (sc.textFile(inp).map(lambda l: l.split())
                 .map(lambda p: (int(p[0]), int(p[1]))).distinct())
        nodes = edges.flatMap(lambda e: [e[0], e[1]]).distinct()
        links = (nodes.map(lambda v: (v, None)).leftOuterJoin(edges.groupByKey())
                 .mapValues(lambda p: list(p[1]) if p[1] is not None else []).cache())
        n = links.count()
        ranks = links.mapValues(lambda _: 1.0 / n)
        for _ in range(iterations):
            joined = links.join(ranks).cache()
            dangling = joined.filter(lambda kv: not kv[1][0]).map(lambda kv: kv[1][1]).sum()
            contribs = joined.flatMap(
                lambda kv: [(v, kv[1][1] / len(kv[1][0])) for v in kv[1][0]])
            sums = links.mapValues(lambda _: 0.0).union(contribs).reduceByKey(add)
            ranks = sums.mapValues(lambda s, dn=dangling: (1 - d) / n + d * (s + dn / n)).cache()
            ranks.count()
            joined.unpersist()
        ranks.saveAsTextFile(out)
    print(f"spark {job}: {time.time() - t:.2f} s (local[{cores}])")
    sc.stop()


if __name__ == "__main__":
    main()
