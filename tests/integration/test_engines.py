"""The podman/docker layer (localaistack.runtime.engines) against the real engines.

Needs the engines and the image localhost/las-busybox:latest: run ``scripts/ci-containers-up``
first (as root). Without them every test here skips with the reason (and fails under
LAS_REQUIRE_ALL=1). Each test labels its containers ``las.test=<unique>`` and removes all of
them at teardown. Nothing here relies on /etc/containers/containers.conf: the engine gets
its global args and every container its ulimits from the module's ``suggested_*`` helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import wait_until

from localaistack.runtime import engines
from localaistack.runtime.engines import (
    ContainerRunSpec,
    ContainerState,
    Engine,
    EngineError,
    PublishedPort,
    VolumeMount,
    podmanapi,
    suggested_global_args,
    suggested_ulimits,
)

IMAGE = "localhost/las-busybox:latest"
LABEL = "las.test"
DOCKER_SOCK = "/run/las-ci/docker.sock"
NOBODY = "65534:65534"

ENGINES = [
    pytest.param("podman", marks=pytest.mark.podman),
    pytest.param("docker", marks=pytest.mark.docker),
]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    name: str = request.param
    env = {}
    if name == "docker" and "DOCKER_HOST" not in os.environ and os.path.exists(DOCKER_SOCK):
        env["DOCKER_HOST"] = f"unix://{DOCKER_SOCK}"
    eng = Engine(name, env=env, global_args=suggested_global_args(name))
    ok, why = eng.usable()
    if not ok:
        pytest.skip(f"{name} is not usable here ({why}); run scripts/ci-containers-up as root")
    if not eng.image_exists(IMAGE):
        pytest.skip(f"{IMAGE} is not in {name}; run scripts/ci-containers-up as root")
    return eng


@dataclass
class Box:
    """The test's engine, its unique label value, and a spec factory carrying that label."""

    engine: Engine
    label: str

    def spec(self, argv: list[str], **kw: Any) -> ContainerRunSpec:
        kw.setdefault("name", f"las-t-{uuid.uuid4().hex[:12]}")
        kw.setdefault("user", NOBODY)
        kw.setdefault("ulimits", suggested_ulimits())
        return ContainerRunSpec(image=IMAGE, argv=argv, labels={LABEL: self.label}, **kw)

    def mine(self) -> list[ContainerState]:
        return self.engine.list_labelled(LABEL, self.label)

    def run_to_end(self, argv: list[str], **kw: Any) -> tuple[int | None, str, str]:
        """Run a container to its end: exit code, stdout, stderr (from the engine's logs)."""
        cid = self.engine.run(self.spec(argv, **kw))
        code = self.engine.wait(cid, timeout=20)
        out, err = self.logs(cid)
        return code, out, err

    def logs(self, cid: str) -> tuple[str, str]:
        proc = subprocess.run(
            self.engine.logs_args(cid),
            capture_output=True,
            text=True,
            env=self.engine.subprocess_env(),
            cwd=self.engine.cwd,
            timeout=20,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr


@pytest.fixture
def box(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Box]:
    # The test runs from its own directory: podman must not drop its stray `oom` file here.
    monkeypatch.chdir(tmp_path)
    b = Box(engine, uuid.uuid4().hex)
    yield b
    for state in engine.list_labelled(LABEL, b.label):
        engine.remove(state.id, force=True)
    assert engine.list_labelled(LABEL, b.label) == []
    assert not (tmp_path / "oom").exists(), "an engine call wrote into the caller's cwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def external_address() -> str | None:
    """This machine's non-loopback IPv4 address (the default route's source), if any."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # UDP connect sends nothing; it picks the source
        addr = str(s.getsockname()[0])
        if not addr.startswith("127."):
            return addr
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5)
        for addr in out.stdout.split():
            if "." in addr and not addr.startswith("127."):
                return addr
    return None


def http_get(host: str, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=1) as r:
            return str(r.read().decode())
    except (urllib.error.URLError, OSError):
        return None


# --- tests --------------------------------------------------------------------------------


def test_http_reachable_on_loopback_only(box: Box) -> None:
    port = free_port()
    spec = box.spec(
        ["httpd", "-f", "-p", "8080", "-h", "/www"],
        ports=[PublishedPort("127.0.0.1", port, 8080)],
    )
    cid = box.engine.run(spec)
    body = wait_until(lambda: http_get("127.0.0.1", port), timeout=10, message="httpd")
    assert body.strip() == "las-busybox ok"
    state = box.engine.inspect(cid)
    assert state is not None and state.running
    assert state.security["NetworkMode"] == "bridge"
    assert state.security["PortBindings"] == [
        {"host_ip": "127.0.0.1", "host_port": port, "container_port": 8080, "protocol": "tcp"}
    ]
    other = external_address()
    if other is not None:  # only a machine without any non-loopback address skips this
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, port)) != 0, f"port {port} answers on {other}"


def test_security_flags_read_back(box: Box) -> None:
    spec = box.spec(["sleep", "60"], pids_limit=64)
    cid = box.engine.run(spec)
    state = box.engine.inspect(cid)
    assert state is not None and state.running and state.pid > 0
    sec = state.security
    assert sec["Capabilities"] == []
    assert "ALL" in sec["CapDrop"] or box.engine.name == "podman"
    assert sec["NoNewPrivileges"] is True
    assert sec["ReadonlyRootfs"] is True
    assert sec["User"] == NOBODY
    assert sec["PidsLimit"] == 64
    assert sec["Init"] is True
    assert sec["Privileged"] is False
    assert sec["NetworkMode"] == "none"
    assert sec["PortBindings"] == []
    assert any(u.startswith("nofile=") for u in sec["Ulimits"])
    assert state.labels[LABEL] == box.label and state.name == spec.name
    # What the workload sees, through exec.
    script = (
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; id -u; "
        "touch /rootfs-write 2>/dev/null || echo root-ro; touch /tmp/x && echo tmp-rw"
    )
    proc = subprocess.run(
        box.engine.exec_args(cid, ["sh", "-c", script]),
        capture_output=True,
        text=True,
        env=box.engine.subprocess_env(),
        cwd=box.engine.cwd,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[lines.index("CapEff:") + 1] == "0000000000000000"
    assert lines[lines.index("CapBnd:") + 1] == "0000000000000000"
    assert lines[lines.index("NoNewPrivs:") + 1] == "1"
    assert "65534" in lines and "root-ro" in lines and "tmp-rw" in lines


def test_cap_add_is_the_only_capability(box: Box) -> None:
    cid = box.engine.run(box.spec(["sleep", "60"], cap_add=["net_bind_service"]))
    state = box.engine.inspect(cid)
    assert state is not None
    assert state.security["Capabilities"] == ["CAP_NET_BIND_SERVICE"]


def test_no_ports_means_no_network(box: Box) -> None:
    code, out, err = box.run_to_end(["cat", "/proc/net/dev"])
    assert code == 0, err
    interfaces = [ln.split(":")[0].strip() for ln in out.splitlines() if ":" in ln]
    assert interfaces == ["lo"]


def test_exit_code(box: Box) -> None:
    cid = box.engine.run(box.spec(["sh", "-c", "exit 3"]))
    assert box.engine.wait(cid, timeout=20) == 3
    state = box.engine.inspect(cid)
    assert state is not None
    assert (state.status, state.running, state.exit_code, state.pid) == ("exited", False, 3, 0)
    assert state.finished_at
    assert box.engine.oom_detected(state, None)[0] is False


def test_memory_limit_kill_is_detected(box: Box, tmp_path: Path) -> None:
    limit = 16 * 1024 * 1024
    spec = box.spec(["sh", "-c", "x=a; while true; do x=$x$x; done"], memory=limit)
    cid = box.engine.run(spec)
    assert box.engine.wait(cid, timeout=30) == 137
    state = box.engine.final_state(cid)
    assert state is not None and state.memory_limit == limit
    detected, reason = box.engine.oom_detected(state, limit)
    assert detected, reason
    if box.engine.name == "docker":
        assert state.oom_killed
        assert reason == "reported by docker (OOMKilled)"
    elif state.oom_killed:  # podman on cgroup v2 reports it
        assert reason == "reported by podman (OOMKilled)"
    else:
        assert reason == (
            "inferred: exit 137 under a 16MiB memory limit; podman on cgroup v1 does not "
            "report OOMKilled"
        )
    assert not (tmp_path / "oom").exists()


def test_stop_ends_sigterm_ignoring_and_handlerless_workloads(box: Box) -> None:
    # Ignores SIGTERM everywhere (ignored dispositions survive exec): SIGKILL after 2 s.
    deaf = box.engine.run(
        box.spec(["sh", "-c", "trap '' TERM; while true; do sleep 1; done"], stop_signal="SIGTERM")
    )
    # No handler at all: as PID 1 it would ignore SIGTERM; under --init it dies at once.
    plain = box.engine.run(box.spec(["sleep", "600"]))
    time.sleep(0.3)  # let the trap be installed
    t0 = time.monotonic()
    box.engine.stop(deaf, timeout=2)
    deaf_s = time.monotonic() - t0
    t0 = time.monotonic()
    box.engine.stop(plain, timeout=10)
    plain_s = time.monotonic() - t0
    deaf_state, plain_state = box.engine.inspect(deaf), box.engine.inspect(plain)
    assert deaf_state is not None and plain_state is not None
    assert deaf_state.status == "exited" and deaf_state.exit_code == 137
    assert 1.9 < deaf_s < 3.5, f"stop -t 2 took {deaf_s:.2f}s"
    assert plain_state.status == "exited" and plain_state.exit_code == 143
    assert plain_s < 2.0, f"stop of a handlerless workload took {plain_s:.2f}s"
    box.engine.stop(deaf, timeout=2)  # stopping an exited container is not an error


def test_missing_image(box: Box) -> None:
    spec = box.spec(["true"])
    spec = spec._replace(image="localhost/las-missing:never")
    with pytest.raises(EngineError) as info:
        box.engine.run(spec)
    err = info.value
    name = box.engine.name
    assert err.message == f"image localhost/las-missing:never is not present in {name}"
    assert err.hint is not None and f"`{name} pull localhost/las-missing:never`" in err.hint
    assert box.mine() == []
    assert box.engine.inspect(spec.name) is None


def test_port_already_in_use(box: Box) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = box.spec(["sleep", "60"], ports=[PublishedPort("127.0.0.1", port, 8080)])
        with pytest.raises(EngineError) as info:
            box.engine.run(spec)
    assert info.value.message == f"port 127.0.0.1:{port} is already in use"
    assert box.mine() == []
    assert box.engine.inspect(spec.name) is None


def test_missing_volume_source_fails_before_running(box: Box, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    spec = box.spec(["true"], volumes=[VolumeMount(str(missing), "/data")])
    with pytest.raises(EngineError) as info:
        box.engine.run_args(spec)
    assert info.value.message == f"volume source {missing} does not exist"
    with pytest.raises(EngineError):
        box.engine.run(spec)
    assert box.mine() == []
    assert not missing.exists()  # docker -v would have created it


def test_read_only_volume(box: Box, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o777)  # writable for nobody: only the read-only mount may refuse the write
    (data / "f").write_text("hello\n")
    script = "cat /data/f; echo x > /data/g 2>/dev/null || echo refused"
    code, out, err = box.run_to_end(
        ["sh", "-c", script], volumes=[VolumeMount(str(data), "/data", read_only=True)]
    )
    assert code == 0, err
    assert out.split() == ["hello", "refused"]
    assert not (data / "g").exists()


def test_logs_keep_stdout_and_stderr_apart(box: Box) -> None:
    code, out, err = box.run_to_end(["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"])
    assert code == 0
    assert out == "to-out\nmore-out\n"
    assert err == "to-err\n"


def test_list_labelled_kill_and_idempotent_remove(box: Box) -> None:
    running = box.engine.run(box.spec(["sleep", "60"]))
    exited = box.engine.run(box.spec(["true"]))
    assert box.engine.wait(exited, timeout=20) == 0
    found = {s.id: s for s in box.mine()}
    assert set(found) == {running, exited}
    assert found[running].running and not found[exited].running
    assert {running, exited} <= {s.id for s in box.engine.list_labelled(LABEL)}
    assert box.engine.kill(exited, "SIGTERM") is False  # not running: nothing to signal
    assert box.engine.kill(running, signal.SIGKILL.name) is True
    assert box.engine.wait(running, timeout=10) == 137
    for cid in (running, exited):
        box.engine.remove(cid)
        box.engine.remove(cid)  # already gone: no error
        assert box.engine.inspect(cid) is None
        assert box.engine.kill(cid) is False
        box.engine.stop(cid, timeout=1)
        with pytest.raises(EngineError):
            box.engine.wait(cid, timeout=5)
    assert box.mine() == []


def test_taken_name_is_refused_and_the_owner_kept(box: Box) -> None:
    spec = box.spec(["sleep", "60"])
    first = box.engine.run(spec)
    with pytest.raises(EngineError) as info:
        box.engine.run(spec)
    assert info.value.message == (
        f"a container named {spec.name} already exists in {box.engine.name}"
    )
    state = box.engine.inspect(first)
    assert state is not None and state.running


def test_wait_times_out_with_none(box: Box) -> None:
    cid = box.engine.run(box.spec(["sleep", "60"]))
    t0 = time.monotonic()
    assert box.engine.wait(cid, timeout=0.5) is None
    assert time.monotonic() - t0 < 2


def test_gpu_request_reaches_the_engine_and_leaves_nothing(box: Box) -> None:
    """No GPU here: the engine must refuse at the device stage, not at argument parsing."""
    spec = box.spec(["true"], gpus=[("nvidia", "GPU-aaaa"), ("nvidia", "GPU-bbbb")])
    args = box.engine.run_args(spec)
    if box.engine.name == "docker":
        assert args[args.index("--gpus") + 1] == '"device=GPU-aaaa,GPU-bbbb"'
    else:
        assert "--device=nvidia.com/gpu=GPU-aaaa" in args
        assert "--device=nvidia.com/gpu=GPU-bbbb" in args
    with pytest.raises(EngineError) as info:
        box.engine.run(spec)
    assert info.value.message.startswith(f"{box.engine.name} cannot provide the GPU(s): ")
    assert "invalid" not in info.value.message.lower()  # not a CLI parse error
    assert box.mine() == []


def test_run_args_never_widen_access(box: Box) -> None:
    spec = box.spec(["true"], ports=[PublishedPort("127.0.0.1", 18080, 80)])
    args = box.engine.run_args(spec)
    joined = " ".join(args)
    for forbidden in ("--privileged", "--network=host", "--net=host", "docker.sock", "podman.sock"):
        assert forbidden not in joined
    assert "--cap-drop=ALL" in args and "--security-opt=no-new-privileges" in args
    assert "--pull=never" in args and "--init" in args and "--read-only" in args
    assert args[args.index("-p") + 1] == "127.0.0.1:18080:80/tcp"
    assert "--network=none" not in args
    assert "--network=none" in box.engine.run_args(box.spec(["true"]))
    v6 = box.engine.run_args(box.spec(["true"], ports=[PublishedPort("::1", 18080, 80)]))
    assert "[::1]:18080:80/tcp" in v6
    with pytest.raises(EngineError):
        box.engine.run_args(box.spec(["true"], ports=[PublishedPort("", 18080, 80)]))


@pytest.mark.docker
def test_unusable_daemon_is_reported(tmp_path: Path) -> None:
    eng = Engine("docker", env={"DOCKER_HOST": f"unix://{tmp_path}/absent.sock"})
    if eng.binary is None:
        pytest.skip("the docker CLI is not installed; run scripts/ci-containers-up as root")
    ok, why = eng.usable()
    assert not ok and why.startswith("docker is not usable: ") and "absent.sock" in why
    spec = ContainerRunSpec(name=f"las-t-{uuid.uuid4().hex[:12]}", image=IMAGE, argv=["true"])
    with pytest.raises(EngineError) as info:
        eng.run(spec)
    assert info.value.message.startswith("docker is not usable: ")
    assert info.value.hint is not None and "DOCKER_HOST" in info.value.hint
    with pytest.raises(EngineError):
        eng.list_labelled(LABEL)


def test_unknown_engine_and_missing_cli() -> None:
    with pytest.raises(EngineError):
        Engine("lxc")
    eng = Engine("podman", env={"PATH": "/nonexistent"})
    assert eng.binary is None
    assert eng.usable() == (False, "podman is not installed (no 'podman' on PATH)")
    with pytest.raises(EngineError) as info:
        eng.image_exists(IMAGE)
    assert "not installed" in info.value.message


def test_engine_gives_each_engines_own_class() -> None:
    """``Engine(name)`` is the engine's subclass; what differs lives there, not in branches."""
    podman, docker = Engine("podman"), Engine("docker")
    assert type(podman) is engines.Podman and type(docker) is engines.Docker
    assert isinstance(podman, Engine) and podman.name == "podman" and docker.name == "docker"
    assert engines.Podman("podman").name == "podman"
    with pytest.raises(EngineError, match="is the podman engine"):
        engines.Podman("docker")
    with pytest.raises(EngineError) as info:
        Engine("lxc")
    assert info.value.message == "unknown container engine 'lxc'"
    assert info.value.hint == "use one of: podman, docker"
    assert docker.podman_socket() is None and docker.podman_api() is None
    assert engines.suggested_global_args("lxc") == []
    assert engines.image_listed("lxc", os.environ, IMAGE) is False


def test_image_listed_answers_without_the_cli(engine: Engine) -> None:
    """The start path's shortcut (the engine's image store, no CLI) says yes only for an
    image that is there; where it cannot tell, it says no and the CLI decides."""
    assert engine.image_listed(IMAGE)
    assert engine.image_listed(IMAGE.removesuffix(":latest"))  # the default tag
    missing = "localhost/las-missing:never"
    assert not engine.image_listed(missing)
    assert not engine.image_exists(missing)
    digest = IMAGE.removesuffix(":latest") + "@sha256:" + "0" * 64
    assert not engine.image_listed(digest)  # digests are resolved by the engine only
    assert engine.image_exists(IMAGE)


def test_image_listed_never_guesses_about_another_endpoint(engine: Engine) -> None:
    """A docker context or TCP host, or a podman storage.conf, is the CLI's to resolve."""
    if engine.name == "docker":
        other = Engine("docker", env={**engine.env, "DOCKER_HOST": "tcp://127.0.0.1:1"})
    else:
        other = Engine("podman", env={**engine.env, "CONTAINERS_STORAGE_CONF": "/nonexistent"})
    assert not other.image_listed(IMAGE)


def rich_spec(volume: Path, label: str) -> ContainerRunSpec:
    """A spec that sets every setting las passes (unnamed): for the API/CLI parity tests."""
    return ContainerRunSpec(
        name="",
        image=IMAGE,
        argv=["sleep", "60"],
        env=[("A", "1")],
        secret_env=[("S", "x")],
        workdir="/tmp",
        user=NOBODY,
        volumes=[VolumeMount(str(volume), "/data", True)],
        memory=64 * 1024 * 1024,
        cpus=0.5,
        pids_limit=100,
        cap_add=["NET_BIND_SERVICE"],
        labels={LABEL: label},
        ulimits=suggested_ulimits(),
        stop_signal="SIGINT",
        log_max_size=1_000_000,
    )


@pytest.mark.docker
def test_docker_api_run_makes_the_cli_runs_container(tmp_path: Path) -> None:
    """las starts docker containers through dockerd's API (``Engine.run``): the container
    must be the one ``docker run -d`` makes from ``run_args``, setting for setting."""
    env = {"DOCKER_HOST": f"unix://{DOCKER_SOCK}"} if "DOCKER_HOST" not in os.environ else {}
    eng = Engine("docker", env=env)
    if not eng.usable()[0] or not eng.image_exists(IMAGE):
        pytest.skip("docker is not usable here; run scripts/ci-containers-up as root")
    label = uuid.uuid4().hex
    spec = rich_spec(tmp_path, label)

    def inspect(cid: str) -> dict[str, Any]:
        out = subprocess.run(
            [*eng.base_args(), "inspect", cid],
            capture_output=True,
            text=True,
            env=eng.subprocess_env(),
            check=True,
        ).stdout
        data: dict[str, Any] = json.loads(out)[0]
        return data

    try:
        for ports in ([], [18081]):
            by_cli = spec._replace(
                name=f"las-t-{uuid.uuid4().hex[:12]}",
                ports=[PublishedPort("127.0.0.1", p, 8080) for p in ports],
            )
            by_api = by_cli._replace(
                name=f"las-t-{uuid.uuid4().hex[:12]}",
                ports=[p._replace(host_port=p.host_port + 1) for p in by_cli.ports],
            )
            subprocess.run(
                eng.run_args(by_cli),
                env={**eng.subprocess_env(), "S": "x"},
                capture_output=True,
                check=True,
                cwd=eng.cwd,
            )
            a, b = inspect(by_cli.name), inspect(eng.run(by_api))
            for c in (a, b):  # the docker CLI orders the variables it takes from its own
                c["Config"]["Env"].sort()  # environment (--env=S) at random among the others
            text = json.dumps(b["HostConfig"]).replace('"18082"', '"18081"')
            b["HostConfig"] = json.loads(text)
            for section in ("Config", "HostConfig"):
                keys = set(a[section]) | set(b[section])
                differ = {
                    k
                    for k in keys
                    if (a[section].get(k) or None) != (b[section].get(k) or None)  # [] == None
                }
                assert differ <= {"Hostname"}, (section, ports, differ)
            assert a["Mounts"] == b["Mounts"] and a["Args"] == b["Args"]
        # GPUs: no GPU here, so the start would fail; the created containers must agree.
        gpus = spec._replace(gpus=[("nvidia", "GPU-aaaa"), ("nvidia", "GPU-bbbb")])
        argv = eng.run_args(gpus._replace(name=f"las-t-{uuid.uuid4().hex[:12]}"))
        argv[argv.index("run") : argv.index("run") + 2] = ["create"]
        subprocess.run(
            argv,
            env={**eng.subprocess_env(), "S": "x"},
            capture_output=True,
            check=True,
            cwd=eng.cwd,
        )
        api_name = f"las-t-{uuid.uuid4().hex[:12]}"
        sock = engines.docker_socket(eng.subprocess_env())
        assert sock is not None
        body = engines.docker_create_body(gpus._replace(name=api_name))
        status, reply = engines.api_request(
            sock, "POST", f"/containers/create?name={api_name}", body, 30
        )
        assert status == 201, reply
        cli_gpu = inspect(argv[argv.index("--name") + 1])["HostConfig"]["DeviceRequests"]
        assert cli_gpu == inspect(api_name)["HostConfig"]["DeviceRequests"]
        assert cli_gpu[0]["DeviceIDs"] == ["GPU-aaaa", "GPU-bbbb"]
    finally:
        for st in eng.list_labelled(LABEL, label):
            eng.remove(st.id)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


@pytest.mark.podman
def test_podman_api_run_makes_the_cli_runs_container(tmp_path: Path) -> None:
    """las starts podman containers through podman's API service (``Engine.run``): the
    container must be the one ``podman run -d`` makes from ``run_args``, setting for
    setting (an ordered environment and the container's own identity aside)."""
    eng = Engine("podman", global_args=suggested_global_args("podman"))
    if not eng.usable()[0] or not eng.image_exists(IMAGE):
        pytest.skip("podman is not usable here; run scripts/ci-containers-up as root")
    sock = eng.podman_api(wait=True)
    assert sock is not None, "podman's API service did not start"
    label = uuid.uuid4().hex
    spec = rich_spec(tmp_path, label)
    # What differs between any two containers: identity, paths, times, addresses.
    own = ("Id", "Name", "Created", "StartedAt", "Pid", "Hostname", "Path", "Rootfs", "Dir",
           "Network", "ExitCommand", "Env", "CreateCommand", "Aliases", "Dependencies")  # fmt: skip

    def inspect(cid: str) -> dict[str, Any]:
        out = subprocess.run(
            [*eng.base_args(), "inspect", cid], capture_output=True, text=True, check=True
        ).stdout
        data: dict[str, Any] = json.loads(out)[0]
        return data

    try:
        for ports in ([], [free_port()]):
            by_cli = spec._replace(
                name=f"las-t-{uuid.uuid4().hex[:12]}",
                ports=[PublishedPort("127.0.0.1", p, 8080) for p in ports],
            )
            api_ports = [PublishedPort("127.0.0.1", free_port(), 8080) for _ in ports]
            by_api = by_cli._replace(name=f"las-t-{uuid.uuid4().hex[:12]}", ports=api_ports)
            subprocess.run(
                eng.run_args(by_cli),
                env={**os.environ, "S": "x"},
                capture_output=True,
                check=True,
                cwd=eng.cwd,
            )
            body = engines.podman_create_body(by_api, eng.run_args(by_api))
            a, b = inspect(by_cli.name), inspect(eng._api_run(sock, by_api, 30, body))
            for p, q in zip(by_cli.ports, by_api.ports, strict=True):
                text = json.dumps(b["HostConfig"]).replace(f'"{q.host_port}"', f'"{p.host_port}"')
                b["HostConfig"] = json.loads(text)
            fa, fb = _flat(a), _flat(b)
            differ = {
                k
                for k in set(fa) | set(fb)
                if fa.get(k) != fb.get(k) and not any(word in k for word in own)
            }
            assert differ == set(), (ports, {k: (fa.get(k), fb.get(k)) for k in differ})
            envs = [
                {e for e in c["Config"]["Env"] if not e.startswith("HOSTNAME=")} for c in (a, b)
            ]
            assert envs[0] == envs[1] and {"A=1", "S=x"} <= envs[0]
            assert b["Config"]["CreateCommand"] == eng.run_args(by_api)
    finally:
        for st in eng.list_labelled(LABEL, label):
            eng.remove(st.id)


@pytest.mark.podman
def test_podman_api_start_failure_releases_its_ports() -> None:
    """podman 4.3's API service keeps the ports of a start that failed in the OCI runtime
    bound; las then ends the service, so the port is free again (as after `podman run`)."""
    eng = Engine("podman", global_args=suggested_global_args("podman"))
    if not eng.usable()[0] or not eng.image_exists(IMAGE):
        pytest.skip("podman is not usable here; run scripts/ci-containers-up as root")
    sock = eng.podman_api(wait=True)
    assert sock is not None, "podman's API service did not start"
    service = podmanapi._service_pid(sock)
    port = free_port()
    # A file limit above the kernel's nr_open: runc's setrlimit fails at create.
    spec = ContainerRunSpec(
        name=f"las-t-{uuid.uuid4().hex[:12]}",
        image=IMAGE,
        argv=["sleep", "60"],
        ports=[PublishedPort("127.0.0.1", port, 8080)],
        ulimits=["nofile=1073741824:1073741824"],
    )
    with pytest.raises(EngineError):
        eng.run(spec)

    def free() -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    wait_until(free, 10, message=f"127.0.0.1:{port} released after the failed start")
    assert podmanapi._service_pid(sock) != service  # the service that held it ended
    assert eng.inspect(spec.name) is None
    assert eng.podman_api(wait=True) == sock  # a new service serves the next start


@pytest.mark.podman
def test_podman_service_follows_configuration_and_can_be_refused(tmp_path: Path) -> None:
    """A service reads podman's configuration once: another configuration (a file
    written, an environment variable) gets another service; LAS_PODMAN_SERVICE=0 and a
    remote podman get none (the CLI is used)."""
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    eng = Engine("podman", env=env, global_args=suggested_global_args("podman"))
    if eng.binary is None:
        pytest.skip("podman is not installed")
    first = eng.podman_socket()
    assert first is not None and first == eng.podman_socket()
    assert os.stat(os.path.dirname(first)).st_mode & 0o077 == 0  # private to this user
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "containers.conf").write_text("[containers]\n")
    second = eng.podman_socket()
    assert second not in (None, first)
    other = Engine("podman", env={**env, "CONTAINERS_CONF": "/dev/null"})
    assert other.podman_socket() not in (None, first, second)
    for off in ({"LAS_PODMAN_SERVICE": "0"}, {"CONTAINER_HOST": "ssh://x/run/podman.sock"}):
        assert Engine("podman", env={**env, **off}).podman_socket() is None
        assert Engine("podman", env={**env, **off}).podman_api(wait=True) is None
