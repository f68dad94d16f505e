"""loadgen's compiled client (``--client go``): builds benchmarks/goload and runs its phases.

The Python client shares the cores with the server it measures and spends 2-6 ms of its
own per call at half load on 2 cores (benchmarks/README.md, session 43). goload, in Go,
sends requests serialised here beforehand and counts the replies without decoding them.
It needs Go and grpc-go: ``make goload`` installs Debian's golang-go and
golang-google-grpc-dev, and the binary is built once per source into ~/.cache/feedrank.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from serving.client import TOKEN_VARIABLE

SOURCE = Path(__file__).parent / "goload" / "main.go"
GOPATH = "/usr/share/gocode"  # where Debian's golang-google-grpc-dev puts grpc-go's sources
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "feedrank"
INSTALL_HINT = "`make goload` installs them (Debian's golang-go and golang-google-grpc-dev)"


class GoClientUnavailable(RuntimeError):
    """Go or grpc-go is missing, or goload does not build; the message says what to install."""


def build() -> Path:
    """The goload binary for this source and this Go, built on first use."""
    go = shutil.which("go")
    if go is None:
        raise GoClientUnavailable(f"--client go needs the go compiler on PATH; {INSTALL_HINT}")
    if not Path(GOPATH, "src", "google.golang.org", "grpc").is_dir():
        raise GoClientUnavailable(f"--client go needs grpc-go's sources in {GOPATH}; {INSTALL_HINT}")
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = CACHE / f"goload-{digest}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": ""}
    built = subprocess.run([go, "build", "-o", str(partial), str(SOURCE)], capture_output=True, text=True, env=env)
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise GoClientUnavailable(f"goload did not build ({INSTALL_HINT}):\n{built.stderr.strip()}")
    partial.replace(binary)  # atomic: a concurrent build finds a whole binary or none
    return binary


def write_requests(path: Path, requests: Iterable[bytes]) -> Path:
    """Serialised requests as goload reads them: each behind its length, a little-endian uint32."""
    with open(path, "wb") as handle:
        for request in requests:
            handle.write(struct.pack("<I", len(request)))
            handle.write(request)
    return path


class GoLoadFailed(RuntimeError):
    """goload stopped before its phase's report (a server it cannot reach, a bad flag); the message is its own."""


class GoReport(NamedTuple):
    """One phase: calls started, each success's latency in seconds, errors by status code
    name, the successes whose reply was an empty feed (0 unless its method counts them), and
    in open loop how late each call started after its scheduled time, in seconds."""

    started: int
    latencies: list[float]
    errors: dict[str, int]
    elapsed: float
    empty_feeds: int = 0
    send_lags: list[float] = []


class GoMethod(NamedTuple):
    """An RPC as goload calls it: the full gRPC method, a file of serialised requests
    (``write_requests``), the bearer token to send (None: none), and the number of the
    reply's repeated field whose absence makes the reply an empty feed (0: not counted)."""

    method: str
    requests: Path
    token: str | None = None
    items_field: int = 0


class GoClient:
    """Phases of calls to ``target`` by goload: ``methods`` maps an RPC's name in loadgen's
    table to a GoMethod (or its first fields, a tuple), over TLS trusting the CA file
    ``tls_ca`` when given. Until one phase has connected, a target goload cannot reach is
    GoLoadFailed; after that (the server died mid-run) the calls' failures are counted as
    errors, as the Python client counts them."""

    def __init__(self, binary: Path, target: str, methods: dict[str, GoMethod | tuple], connections: int, timeout: float,
                 seed: int, tls_ca: str | None = None) -> None:  # fmt: skip
        self.binary, self.target, self.methods = binary, target, {rpc: GoMethod(*method) for rpc, method in methods.items()}
        self.connections, self.timeout, self.seed, self.tls_ca = connections, timeout, seed, tls_ca
        self.connected = False

    async def closed(self, rpc: str, concurrency: int, duration: float) -> GoReport:
        return await self._run(rpc, duration, "-mode", "closed", "-concurrency", str(concurrency))

    async def open(self, rpc: str, rate: float, duration: float) -> GoReport:
        return await self._run(rpc, duration, "-mode", "open", "-rate", repr(rate))

    async def _run(self, rpc: str, duration: float, *mode: str) -> GoReport:
        method = self.methods[rpc]
        # goload reads the token from the variable `python -m serving feed` reads: argv shows in the process list.
        env = {name: value for name, value in os.environ.items() if name != TOKEN_VARIABLE}
        if method.token:
            env[TOKEN_VARIABLE] = method.token
        process = await asyncio.create_subprocess_exec(
            str(self.binary), "-target", self.target, "-method", method.method, "-requests", str(method.requests), *mode,
            "-duration", f"{duration}s", "-timeout", f"{self.timeout}s", "-connections", str(self.connections),
            "-seed", str(self.seed), f"-must-connect={str(not self.connected).lower()}", "-items-field", str(method.items_field),
            *(["-tls-ca", self.tls_ca] if self.tls_ca else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            out, err = await process.communicate()
        except BaseException:  # the run was interrupted: goload would go on loading the server for the rest of its phase
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise GoLoadFailed(f"goload {rpc} exited with {process.returncode}: {err.decode().strip()}")
        self.connected = True
        report = json.loads(out)
        return GoReport(report["started"], report["latencies_s"], report["errors"], report["elapsed_s"], report["empty_feeds"],
                        report["send_lags_s"])
