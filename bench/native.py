"""Native-runtime benchmarks: las against supervisord and a bare `subprocess.Popen`,
measured side by side in one run (A B C A B C ...).

    python -m bench.native [--quick]

1. start: `las run` of a trivial native module until `running` (CLI process included) vs
   `supervisorctl start` of the same program (startsecs=0) vs `subprocess.Popen` of it from
   this (already running) Python, until it returns (the program is exec'd); and a module's
   first `las run` on a fresh home;
2. failure noticed: workload SIGKILLed until its end is committed to the store (polled
   every 0.2 ms from another connection) vs supervisord's state via XML-RPC vs the return of
   the parent's `Popen.wait()`;
3. log capture: a workload writing lines to stdout under las / under supervisord / into a
   pipe its `Popen` parent copies to a file vs the same workload writing to a file directly
   (the workload times itself); every line counted;
4. idle overhead per supervised module: PSS and CPU seconds over a quiet period;
5. `las ps` latency with N running instances;
6. readiness noticed: time from the workload's port answering (the server notes when it
   starts listening) until `healthy` is recorded;
7. CPU cost of probing a healthy module (HTTP probe every second), per hour;
8. CPU cost of the listener check (sock_diag dumps once a second): idle supervisors with
   the check vs supervisors of modules the policy exposes everywhere (no check).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import Row, alternate_all, run_main

WRITER = textwrap.dedent(
    """
    import sys, time
    total, out_path = int(sys.argv[1]), sys.argv[2]
    line = b"x" * 99 + b"\\n"
    chunk = line * 80
    n = total // len(chunk)
    out = sys.stdout.buffer
    t0 = time.perf_counter()
    for _ in range(n):
        out.write(chunk)
    out.flush()
    took = time.perf_counter() - t0
    open(out_path, "w").write(f"{took} {n * 80}")
    """
)


def las_cmd() -> list[str]:
    script = Path(sys.executable).parent / "las"
    return [str(script)] if script.exists() else [sys.executable, "-m", "localaistack"]


def policy_text(trusted: list[str]) -> str:
    """Trust the bench modules, as root too: the peers (supervisord, by hand) run them as
    root, and this Python may live where the native user cannot read (pyenv under /root)."""
    return f"trusted_native: {trusted}\nnative_allow_root: {trusted}\n"


class LasBench:
    def __init__(self, root: Path) -> None:
        self.home = root / "las-home"
        self.home.mkdir(mode=0o700)
        self.env = {**os.environ, "LAS_HOME": str(self.home)}
        self.cmd = las_cmd()
        self.modules = root / "modules"
        self.modules.mkdir()
        self.trusted: list[str] = []

    def module(self, name: str, argv: list[str]) -> Path:
        path = self.modules / f"{name}.yaml"
        quoted = ", ".join(repr(a) for a in argv)
        path.write_text(
            f"name: {name}\nruntime:\n  modes: [native]\n  native:\n"
            f"    command: [{quoted}]\n  stop: {{timeout: 2s}}\n"
        )
        self.trust(name)
        return path

    def http_module(self, name: str, script: Path, note: Path, interval: str) -> Path:
        """A module serving HTTP with ``script`` (which notes when it listens in ``note``),
        probed every ``interval``."""
        path = self.modules / f"{name}.yaml"
        path.write_text(
            f"name: {name}\nruntime:\n  modes: [native]\n  native:\n"
            f"    command: [{sys.executable!r}, {str(script)!r}, '${{host}}', '${{ports.http}}',"
            f" {str(note)!r}]\n"
            "  ports: [{name: http, port: 8080}]\n"
            f"  health: {{http: {{port: http, path: /}}, interval: {interval}, "
            "start_timeout: 30s}\n"
        )
        self.trust(name)
        return path

    def trust(self, name: str) -> None:
        self.trusted.append(name)
        (self.home / "policy.yaml").write_text(policy_text(self.trusted))

    def las(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.cmd, *args], env=self.env, capture_output=True, text=True, check=check
        )

    def prime(self) -> None:
        """One `las run` first, so that the store exists (as after any earlier `las run`)."""
        path = self.module("prime", ["sleep", "1000"])
        self.las("run", "-d", str(path))
        self.las("rm", "-f", "prime")

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "state.db", isolation_level=None)

    def run_row(self, name: str) -> sqlite3.Row:
        with self.db() as c:
            c.row_factory = sqlite3.Row
            row: sqlite3.Row = c.execute(
                "SELECT r.* FROM runs r JOIN instances i ON r.run_id=i.current_run WHERE i.name=?",
                (name,),
            ).fetchone()
        return row


class SupervisordBench:
    def __init__(self, root: Path, programs: dict[str, str]) -> None:
        self.dir = root / "supervisord"
        self.dir.mkdir()
        self.sock = self.dir / "sock"
        conf = [
            "[unix_http_server]",
            f"file={self.sock}",
            "[supervisord]",
            f"logfile={self.dir}/supervisord.log",
            f"pidfile={self.dir}/pid",
            "nodaemon=true",
            "loglevel=warn",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
        ]
        for name, command in programs.items():
            conf += [
                f"[program:{name}]",
                f"command={command}",
                "autostart=false",
                # the crash-loop peer restarts what exits; nothing else does
                "autorestart=true" if name == "crashloop" else "autorestart=false",
                "startretries=1000",
                "startsecs=0",
                "stopwaitsecs=2",
                f"stdout_logfile={self.dir}/{name}.out",
                "stdout_logfile_maxbytes=0",
                f"stderr_logfile={self.dir}/{name}.err",
                "stderr_logfile_maxbytes=0",
            ]
        self.conf = self.dir / "supervisord.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        bindir = Path(sys.executable).parent
        self.proc = subprocess.Popen([str(bindir / "supervisord"), "-c", str(self.conf)])
        self.ctl = [str(bindir / "supervisorctl"), "-c", str(self.conf)]
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("supervisord did not start")
            time.sleep(0.01)
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        self.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def info(self, name: str) -> dict[str, object]:
        result: dict[str, object] = self.rpc.supervisor.getProcessInfo(name)  # type: ignore[assignment]
        return result

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bench_start(las: LasBench, sup: SupervisordBench, reps: int) -> list[Row]:
    path = las.module("sleeper", ["sleep", "1000"])

    def a(i: int) -> float:
        t0 = time.perf_counter()
        las.las("run", str(path), "--name", f"start{i}")
        took = time.perf_counter() - t0
        las.las("rm", "-f", f"start{i}")
        return took

    def b(_i: int) -> float:
        t0 = time.perf_counter()
        subprocess.run([*sup.ctl, "start", "sleeper"], check=True, capture_output=True)
        took = time.perf_counter() - t0
        subprocess.run([*sup.ctl, "stop", "sleeper"], check=True, capture_output=True)
        return took

    def c(_i: int) -> float:
        # Popen returns once the program is exec'd (its error pipe closes on exec)
        t0 = time.perf_counter()
        proc = subprocess.Popen(["sleep", "1000"])
        took = time.perf_counter() - t0
        proc.kill()
        proc.wait()
        return took

    xs, ys, zs = alternate_all([a, b, c], reps)
    ratio = sorted(xs)[len(xs) // 2] / sorted(ys)[len(ys) // 2]
    return [
        Row(
            "start until running (CLI included)",
            "s",
            xs,
            "supervisorctl start",
            ys,
            "<= 1.0x supervisorctl",
            ratio <= 1.0,
            note="a new `las` process each time (a Python, click and the pydantic models of "
            "manifest, policy and plan), planned and admitted each time with the hardware "
            "probe kept from the warm-up round, and a new supervisor process",
        ),
        Row(
            "start until running (CLI included)",
            "s",
            xs,
            "bare subprocess.Popen",
            zs,
            note="bare subprocess.Popen: `sleep` from an already running Python, until exec'd; "
            "the floor any manager starts from (nothing planned, nothing recorded)",
        ),
    ]


def bench_first_run(las: LasBench, reps: int) -> Row:
    """A module's first `las run` on a fresh home: the store created, the hardware probed,
    the module planned (nothing kept yet), its supervisor started, until `running`."""
    path = las.module("firstrun", ["sleep", "1000"])
    root = las.home.parent

    def first(i: int) -> float:
        home = root / f"fresh-{i}"
        home.mkdir(mode=0o700)
        (home / "policy.yaml").write_text(policy_text(["firstrun"]))
        env = {**las.env, "LAS_HOME": str(home)}
        t0 = time.perf_counter()
        subprocess.run([*las.cmd, "run", str(path)], env=env, check=True, capture_output=True)
        took = time.perf_counter() - t0
        rm = [*las.cmd, "rm", "-f", "firstrun"]
        subprocess.run(rm, env=env, check=True, capture_output=True)
        return took

    (xs,) = alternate_all([first], reps)
    return Row(
        "first `las run` of a module on a fresh home",
        "s",
        xs,
        goal="<= 0.5 s",
        meets=sorted(xs)[len(xs) // 2] <= 0.5,
        note="a new home each time (its store created, the hardware probed, a plan made)",
    )


def bench_failure(las: LasBench, sup: SupervisordBench, reps: int) -> list[Row]:
    path = las.module("victim", ["sleep", "1000"])

    def a(i: int) -> float:
        las.las("run", str(path), "--name", f"victim{i}")
        row = las.run_row(f"victim{i}")
        c = las.db()
        t0 = time.perf_counter()
        os.kill(row["pid"], signal.SIGKILL)
        while (
            c.execute("SELECT state FROM runs WHERE run_id=?", (row["run_id"],)).fetchone()[0]
            != "failed"
        ):
            time.sleep(0.0002)
        took = time.perf_counter() - t0
        c.close()
        las.las("rm", "-f", f"victim{i}")
        return took

    def b(_i: int) -> float:
        subprocess.run([*sup.ctl, "start", "sleeper"], check=True, capture_output=True)
        pid = int(str(sup.info("sleeper")["pid"]))
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while sup.info("sleeper")["statename"] == "RUNNING":
            time.sleep(0.0002)
        return time.perf_counter() - t0

    def c(_i: int) -> float:
        proc = subprocess.Popen(["sleep", "1000"])
        t0 = time.perf_counter()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # the parent learns of the end when wait() returns
        return time.perf_counter() - t0

    xs, ys, zs = alternate_all([a, b, c], reps)
    return [
        Row(
            "failure noticed and recorded",
            "s",
            xs,
            "supervisord (in memory)",
            ys,
            "<= 10 ms (durable)",
            sorted(xs)[len(xs) // 2] <= 0.010,
            note="las: committed to SQLite (synchronous=FULL), read back by another "
            "connection; supervisord: in memory, read over XML-RPC",
        ),
        Row(
            "failure noticed and recorded",
            "s",
            xs,
            "bare subprocess.Popen (in memory)",
            zs,
            note="bare subprocess.Popen: SIGKILL until the parent's Popen.wait() returns, "
            "in memory, nothing recorded",
        ),
    ]


def bench_logs(las: LasBench, sup: SupervisordBench, root: Path, mb: int, reps: int) -> list[Row]:
    total = mb * 1_000_000
    writer = root / "writer.py"
    writer.write_text(WRITER)
    timing = root / "timing"
    path = las.module("writer", [sys.executable, str(writer), str(total), str(timing)])
    expected = (total // 8000) * 80

    def direct(_i: int) -> float:
        with open(root / "direct.out", "wb") as out:
            subprocess.run(
                [sys.executable, str(writer), str(total), str(timing)], stdout=out, check=True
            )
        took, n = timing.read_text().split()
        assert int(n) == expected
        return total / float(took) / 1e6

    def under_las(i: int) -> float:
        timing.unlink(missing_ok=True)
        las.las("run", str(path), "--name", f"writer{i}")
        deadline = time.monotonic() + 300
        while las.run_row(f"writer{i}")["state"] != "stopped":
            if time.monotonic() > deadline:
                raise RuntimeError("writer did not finish")
            time.sleep(0.05)
        took, _ = timing.read_text().split()
        from localaistack.runtime.logs.reader import iter_records

        log = las.run_row(f"writer{i}")["log_path"]
        count = sum(
            1
            for r in iter_records(log)
            if r.stream == "O" and not r.partial and len(r.payload) == 99
        )
        if count != expected:
            raise RuntimeError(f"las kept {count} of {expected} lines")
        las.las("rm", "--purge", f"writer{i}")
        return total / float(took) / 1e6

    def under_supervisord(_i: int) -> float:
        out = sup.dir / "writer.out"
        out.write_bytes(b"")
        timing.unlink(missing_ok=True)
        subprocess.run([*sup.ctl, "start", "writer"], check=True, capture_output=True)
        deadline = time.monotonic() + 300
        while not timing.exists() or sup.info("writer")["statename"] == "RUNNING":
            if time.monotonic() > deadline:
                raise RuntimeError("writer did not finish under supervisord")
            time.sleep(0.05)
        took, _ = timing.read_text().split()
        with open(out, "rb") as f:
            count = sum(1 for line in f if len(line) == 100)
        if count != expected:
            raise RuntimeError(f"supervisord kept {count} of {expected} lines")
        return total / float(took) / 1e6

    def through_a_pipe(_i: int) -> float:
        # a parent that keeps its child's output: a pipe (default size) it copies to a file
        out = root / "popen.out"
        timing.unlink(missing_ok=True)
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, str(writer), str(total), str(timing)], stdout=subprocess.PIPE
            )
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 1 << 16):
                f.write(chunk)
            proc.stdout.close()
            if proc.wait() != 0:
                raise RuntimeError(f"writer under Popen exited {proc.returncode}")
        took, _ = timing.read_text().split()
        with open(out, "rb") as f:
            count = sum(1 for line in f if len(line) == 100)
        if count != expected:
            raise RuntimeError(f"the Popen parent kept {count} of {expected} lines")
        return total / float(took) / 1e6

    direct_xs, las_xs, sup_xs, popen_xs = alternate_all(
        [direct, under_las, under_supervisord, through_a_pipe], reps
    )
    ratio = sorted(las_xs)[len(las_xs) // 2] / sorted(direct_xs)[len(direct_xs) // 2]
    return [
        Row(
            f"log capture, {mb} MB of lines (workload speed)",
            "MB/s",
            las_xs,
            "writing to a file directly",
            direct_xs,
            ">= 0.8x direct",
            ratio >= 0.8,
            note=f"every run: all {expected} lines present once, none split",
        ),
        Row(
            f"log capture under supervisord, {mb} MB",
            "MB/s",
            sup_xs,
            "writing to a file directly",
            direct_xs,
        ),
        Row(
            f"log capture through a pipe read by the parent (bare Popen), {mb} MB",
            "MB/s",
            popen_xs,
            "writing to a file directly",
            direct_xs,
            note="bare subprocess.Popen: stdout a pipe (default size), copied by the parent to "
            "a file in 64 KiB reads; every line counted",
        ),
    ]


READY_SERVER = textwrap.dedent(
    """
    import http.server, sys, time
    host, port, note = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    time.sleep(0.3)  # "loading": the port is closed
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *a):
            pass
    server = http.server.HTTPServer((host, port), H)  # bound and listening from here
    open(note, "w").write(repr(time.time()))
    server.serve_forever()
    """
)


def bench_readiness(las: LasBench, root: Path, reps: int) -> Row:
    script = root / "ready.py"
    script.write_text(READY_SERVER)
    note = root / "listening-at"
    path = las.http_module("ready", script, note, "10s")
    xs = []
    for i in range(reps + 1):
        note.unlink(missing_ok=True)
        las.las("run", str(path), "--name", f"ready{i}")  # returns once healthy
        row = las.run_row(f"ready{i}")
        listening = float(note.read_text())
        if i:
            xs.append(float(row["healthy_at"]) - listening)
        las.las("rm", "-f", f"ready{i}")
    return Row(
        "readiness noticed after the port answers",
        "s",
        xs,
        goal="<= 100 ms",
        meets=sorted(xs)[len(xs) // 2] <= 0.100,
        note="healthy_at (recorded by the supervisor) minus the server's own time of listen()",
    )


def bench_probe_cpu(las: LasBench, root: Path, seconds: float) -> Row:
    script = root / "ready.py"
    path = las.http_module("probed", script, root / "probed-note", "1s")
    las.las("run", str(path), "--name", "probed")
    sup = int(las.run_row("probed")["sup_pid"])
    c0 = _cpu_s(sup)
    time.sleep(seconds)  # the period being measured
    per_hour = (_cpu_s(sup) - c0) / seconds * 3600
    las.las("rm", "-f", "probed")
    return Row(
        "supervisor CPU while probing every 1 s",
        "s/h",
        [per_hour],
        goal="negligible",
        meets=per_hour < 36,
        note="CPU seconds per hour of the supervisor (probe + bookkeeping); < 36 s/h "
        "is < 1 % of one core",
    )


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ns(pid: int) -> int:
    """CPU time of a single-threaded process in ns (schedstat: finer than clock ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def bench_listen_check(las: LasBench, k: int, seconds: float) -> Row:
    """Idle supervisors of k modules with the listener check and of k without."""
    path = las.module("watched", ["sleep", "100000"])
    open_path = las.modules / "unwatched.yaml"
    open_path.write_text(
        "name: unwatched\nruntime:\n  modes: [native]\n  native:\n"
        "    command: [sleep, '100000']\n  ports: [{name: http, port: 8080}]\n"
        "  stop: {timeout: 2s}\n"
    )
    las.trust("unwatched")
    names = [f"unwatched{i}" for i in range(k)]
    policy = las.home / "policy.yaml"
    exposed = "network: {host: 127.0.0.1, expose: {unwatched: 0.0.0.0}}\n"
    policy.write_text(policy.read_text() + exposed)  # by module: every such instance
    watched = [f"watched{i}" for i in range(k)]
    for n in watched:
        las.las("run", str(path), "--name", n)
    for n in names:
        las.las("run", str(open_path), "--name", n)
    time.sleep(1.0)  # past the start (the first look is 0.3 s after it)
    with_pids = [int(las.run_row(n)["sup_pid"]) for n in watched]
    without_pids = [int(las.run_row(n)["sup_pid"]) for n in names]
    c0 = {p: _cpu_ns(p) for p in with_pids + without_pids}
    time.sleep(seconds)  # the quiet period being measured
    pct = {p: (_cpu_ns(p) - c0[p]) / 1e9 / seconds * 100 for p in c0}
    for n in watched + names:
        las.las("rm", "-f", n)
    las.trust("watched")  # rewrites the policy without the exposure
    with_check = [pct[p] for p in with_pids]
    without = [pct[p] for p in without_pids]
    extra = statistics.median(with_check) - statistics.median(without)
    return Row(
        f"supervisor CPU, idle, with the listener check ({k} modules, {seconds:g}s)",
        "% of a core",
        with_check,
        "las without the check (exposed modules)",
        without,
        "<= 0.2 % per instance",
        max(with_check) <= 0.2,
        note=f"sock_diag TCP LISTEN + UDP unconnected dumps (v4, v6) every 1 s; the check's "
        f"own share (median with minus median without): {extra:.3f} %",
    )


def bench_idle(las: LasBench, sup: SupervisordBench, k: int, seconds: float) -> list[Row]:
    path = las.module("idler", ["sleep", "100000"])
    names = [f"idle{i}" for i in range(k)]
    for n in names:
        las.las("run", str(path), "--name", n)
    sup_pids = [int(las.run_row(n)["sup_pid"]) for n in names]
    for i in range(k):
        subprocess.run([*sup.ctl, "start", f"idle{i}"], check=True, capture_output=True)
    cpu0 = [_cpu_s(p) for p in sup_pids]
    sup_cpu0 = _cpu_s(sup.proc.pid)
    time.sleep(seconds)  # the quiet period being measured
    las_cpu = [_cpu_s(p) - c for p, c in zip(sup_pids, cpu0, strict=True)]
    sup_cpu = (_cpu_s(sup.proc.pid) - sup_cpu0) / k
    las_pss = [_pss_kb(p) / 1024 for p in sup_pids]
    sup_pss = _pss_kb(sup.proc.pid) / 1024 / k
    for n in names:
        las.las("rm", "-f", n)
    for i in range(k):
        subprocess.run([*sup.ctl, "stop", f"idle{i}"], check=True, capture_output=True)
    return [
        Row(
            f"idle PSS per module ({k} modules)",
            "MB",
            las_pss,
            "supervisord / modules",
            [sup_pss],
            "<= 10 MB",
            sorted(las_pss)[len(las_pss) // 2] <= 10,
            note="las: one supervisor process per module; supervisord: one process for all",
        ),
        Row(
            f"idle CPU per module over {seconds:g}s",
            "s",
            las_cpu,
            "supervisord / modules",
            [sup_cpu],
            "<= 0.2 % of a core (the 1 s watch: listener check)",
            max(las_cpu) <= 0.002 * seconds,
        ),
    ]


def bench_ps(las: LasBench, counts: list[int], reps: int) -> list[Row]:
    path = las.module("psmod", ["sleep", "100000"])
    rows = []
    started = 0
    for n in counts:
        while started < n:
            las.las("run", str(path), "--name", f"ps{started}")
            started += 1
        xs = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            las.las("ps")
            xs.append(time.perf_counter() - t0)
        xs = xs[1:]
        goal = "<= 150 ms" if n == 100 else ""
        rows.append(
            Row(
                f"las ps, {n} running instances",
                "s",
                xs,
                goal=goal,
                meets=(sorted(xs)[len(xs) // 2] <= 0.150) if n == 100 else None,
            )
        )
        sups = [int(las.run_row(f"ps{i}")["sup_pid"]) for i in range(n)]
        total = sum(_pss_kb(p) for p in sups) / 1024
        rows.append(
            Row(
                f"all supervisors' PSS, {n} instances",
                "MB",
                [total],
                note=f"{total / n:.1f} MB per instance",
            )
        )
    for i in range(started):
        las.las("rm", "-f", f"ps{i}", check=False)
    return rows


def bench_crash_loop(las: LasBench, sup: SupervisordBench, root: Path, seconds: float) -> list[Row]:
    """A module that fails at once, restarted on failure: restarts per minute and CPU."""
    count = root / "crash-starts"
    path = las.module("crashy", ["sh", "-c", f"echo x >> {count}; exit 1"])
    text = path.read_text().replace(
        "  stop: {timeout: 2s}\n",
        "  stop: {timeout: 2s}\n"
        "  restart: {policy: on-failure, max_restarts: 1000, "
        "backoff: 100ms, window: 1h}\n",
    )
    path.write_text(text)
    count.write_text("")
    las.las("run", "-d", str(path), "--name", "crashy", check=False)
    sup_pid = int(las.run_row("crashy")["sup_pid"])
    c0 = _cpu_s(sup_pid)
    time.sleep(seconds)  # the period being measured
    las_cpu = _cpu_s(sup_pid) - c0
    las_starts = len(count.read_text().split())
    las.las("rm", "-f", "crashy")
    count.write_text("")
    s0 = _cpu_s(sup.proc.pid)
    subprocess.run([*sup.ctl, "start", "crashloop"], capture_output=True)
    time.sleep(seconds)
    sup_cpu = _cpu_s(sup.proc.pid) - s0
    sup_starts = len(count.read_text().split())
    subprocess.run([*sup.ctl, "stop", "crashloop"], capture_output=True)
    per_min = 60.0 / seconds
    return [
        Row(
            f"crash loop: starts per minute ({seconds:g}s)",
            "/min",
            [las_starts * per_min],
            "supervisord autorestart",
            [sup_starts * per_min],
            "bounded (backoff)",
            note="las: on-failure, backoff 100ms doubling, at most 1000 restarts per hour; "
            "supervisord: autorestart=true, startsecs=0, startretries=1000",
        ),
        Row(f"crash loop: manager CPU over {seconds:g}s", "s", [las_cpu], "supervisord", [sup_cpu]),
    ]


@contextmanager
def workspace() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="las-bench-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def collect(quick: bool) -> list[Row]:
    """Every native benchmark, las and peer side by side."""
    reps = 2 if quick else 7
    with workspace() as root:
        las = LasBench(root)
        writer = root / "writer.py"
        mb = 5 if quick else 200
        idle_k = 2 if quick else 10
        programs = {
            "sleeper": "sleep 1000",
            "writer": f"{sys.executable} {writer} {mb * 1_000_000} {root / 'timing'}",
        }
        programs.update({f"idle{i}": "sleep 100000" for i in range(idle_k)})
        crash = f"sh -c 'echo x >> {root / 'crash-starts'}; exit 1'"
        programs["crashloop"] = crash
        sup = SupervisordBench(root, programs)
        try:
            las.prime()
            rows = [*bench_start(las, sup, reps), bench_first_run(las, reps)]
            rows += bench_failure(las, sup, reps)
            rows += bench_logs(las, sup, root, mb, 2 if quick else 5)
            rows += bench_idle(las, sup, idle_k, 3 if quick else 60)
            rows += bench_ps(las, [10] if quick else [10, 100, 300], 3 if quick else 7)
            rows.append(bench_readiness(las, root, reps))
            rows.append(bench_probe_cpu(las, root, 3 if quick else 60))
            rows.append(bench_listen_check(las, 2 if quick else 5, 5 if quick else 60))
            rows += bench_crash_loop(las, sup, root, 3 if quick else 30)
        finally:
            sup.close()
    return rows


def main() -> None:
    run_main("native", __doc__, collect)


if __name__ == "__main__":
    main()
