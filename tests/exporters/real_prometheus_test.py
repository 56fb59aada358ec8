"""A real Prometheus server scrapes laneguard's /metrics endpoint.

Starts the fixture (which serves /metrics on 127.0.0.1 at a free port) and a Prometheus server on
127.0.0.1 with a temporary storage directory and a 1 s scrape interval; waits (at most 60 s) until
/api/v1/targets reports the target up with no error, then queries one of our series and checks its
value. Everything started here is killed at the end. Usage: real_prometheus_test.py FIXTURE [PROMETHEUS]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

DEADLINE_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def main():
    fixture = sys.argv[1]
    prometheus = sys.argv[2] if len(sys.argv) > 2 else "prometheus"
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            target = subprocess.Popen([fixture, "serve", str(DEADLINE_S + 30)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(target)
            line = target.stdout.readline()
            if not line.startswith("port "):
                print(f"fixture did not report its port: {line!r}")
                return 1
            target_port = int(line.split()[1])
            prom_port = free_port()
            config = os.path.join(tmp, "prometheus.yml")
            with open(config, "w") as f:
                f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                        "scrape_configs:\n  - job_name: laneguard\n    static_configs:\n"
                        f"      - targets: ['127.0.0.1:{target_port}']\n")
            log = open(os.path.join(tmp, "prometheus.log"), "w")
            server = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=log, stderr=subprocess.STDOUT)
            procs.append(server)
            api = f"http://127.0.0.1:{prom_port}/api/v1"
            give_up = time.monotonic() + DEADLINE_S
            status = None
            while time.monotonic() < give_up:
                if server.poll() is not None:
                    break
                try:
                    targets = get_json(api + "/targets")["data"]["activeTargets"]
                    status = [(t["health"], t["lastError"]) for t in targets]
                    if status == [("up", "")]:
                        break
                except OSError:
                    pass  # not listening yet
                time.sleep(0.5)
            if status != [("up", "")]:
                log.flush()
                print(f"target never reported up with no error: {status}")
                print(open(os.path.join(tmp, "prometheus.log")).read()[-4000:])
                return 1
            print("target up, lastError empty")
            query = 'laneguard_calls_total{lane="tool_call",outcome="success"}'
            while time.monotonic() < give_up:
                result = get_json(api + "/query?" + urllib.parse.urlencode({"query": query}))
                series = result["data"]["result"]
                if series:
                    value = float(series[0]["value"][1])
                    if value != 3:
                        print(f"{query} = {value}, expected 3")
                        return 1
                    print(f"{query} = {value} as scraped by Prometheus")
                    # OpenMetrics was negotiated: counter families keep their _total samples and
                    # the unit metadata came through.
                    meta = get_json(api + "/targets/metadata?" + urllib.parse.urlencode(
                        {"metric": "laneguard_call_duration_seconds"}))["data"]
                    if not meta or meta[0].get("unit") != "seconds":
                        print(f"no unit metadata (OpenMetrics not negotiated?): {meta}")
                        return 1
                    print("metadata unit 'seconds': the scrape used OpenMetrics")
                    return 0
                time.sleep(0.5)
            print(f"no result for {query}")
            return 1
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
