"""Test support: a second Docker daemon of the test's own (socket, data root, exec root, pidfile, bridge), for
tests that kill a daemon. Never the engine other tests use."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

import pytest


@contextlib.contextmanager
def second_dockerd(base, *, bridge: str, cidr: str, docker_client, images: tuple[str, ...] = (),
                   client_timeout: int = 600):
    """Yields {"url", "socket", "pid", "process", "client"}; the images are copied in from `docker_client`
    through the SDK (no registry here). Stops the daemon by its pid and removes its bridge afterwards."""
    import docker

    if os.geteuid() != 0:
        pytest.skip("starting a second Docker daemon needs root")
    if not shutil.which("dockerd") or not shutil.which("ip"):
        pytest.skip("dockerd or ip (iproute2) not installed")
    socket = base / "docker.sock"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)  # a leftover of an aborted run
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", cidr, "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    log = open(base / "dockerd.log", "wb")
    daemon = subprocess.Popen(
        ["dockerd", "--host", f"unix://{socket}", "--data-root", str(base / "data"), "--exec-root",
         str(base / "exec"), "--pidfile", str(base / "docker.pid"), "--bridge", bridge, "--iptables=false",
         "--shutdown-timeout", "5"], stdout=log, stderr=subprocess.STDOUT)
    try:
        client = None
        for _ in range(60):
            try:
                client = docker.DockerClient(base_url=f"unix://{socket}", timeout=client_timeout)
                client.ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                client = None
                time.sleep(1)
        if client is None:
            pytest.fail(f"second dockerd did not start: {(base / 'dockerd.log').read_text()[-500:]}")
        for ref in images:
            archive = base / "image.tar"
            with open(archive, "wb") as fh:
                # named=ref: an image with several tags (toolchain:latest is also :default) is saved under this one
                for chunk in docker_client.images.get(ref).save(chunk_size=8 << 20, named=ref):
                    fh.write(chunk)
            with open(archive, "rb") as fh:
                client.images.load(fh)
            archive.unlink()
            client.images.get(ref)
        yield {"url": f"unix://{socket}", "socket": socket, "pid": daemon.pid, "process": daemon, "client": client}
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=30)
        log.close()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        subprocess.run(["umount", "-R", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
