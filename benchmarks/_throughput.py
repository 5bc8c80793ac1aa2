"""Streaming throughput: N bytes of stdout (zeros, random) through the client vs a local pipe read."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

import protocol as p

from ._clients import open_bench_client
from ._report import Section

BLOCK: Final = 1024 * 1024


@attrs.frozen
class Source:
    name: str
    argv: tuple[str, ...]
    sha256: str
    size: int


def make_sources(directory: Path, size: int) -> list[Source]:
    """Zeros from /dev/zero, random bytes from a file written once (so generating them is not timed)."""
    zeros = hashlib.sha256()
    random_digest = hashlib.sha256()
    path = directory / "random.bin"
    with path.open("wb") as file:
        remaining = size
        while remaining:
            block = os.urandom(min(BLOCK, remaining))
            file.write(block)
            random_digest.update(block)
            zeros.update(bytes(len(block)))
            remaining -= len(block)
    return [
        Source("zeros", ("head", "-c", str(size), "/dev/zero"), zeros.hexdigest(), size),
        Source("random", ("cat", str(path)), random_digest.hexdigest(), size),
    ]


@attrs.define
class Sample:
    seconds: float
    exact: bool
    completion: str
    reads: int
    note: str = ""


@attrs.define
class ArmSamples:
    arm: str
    source: str
    samples: list[Sample] = attrs.Factory(list)

    def mb_per_s(self, size: int) -> float:
        return size / 1e6 / statistics.median(s.seconds for s in self.samples if s.seconds == s.seconds)

    @property
    def exact(self) -> bool:
        return all(s.exact for s in self.samples)


def local_pipe(source: Source) -> Sample:
    start = time.perf_counter()
    proc = subprocess.Popen(source.argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    data = proc.stdout.read()
    proc.wait()
    elapsed = time.perf_counter() - start
    proc.stdout.close()
    exact = len(data) == source.size and hashlib.sha256(data).hexdigest() == source.sha256
    return Sample(elapsed, exact, "local", 0)


async def through_client(url: str, token: str, source: Source, *, binary: bool, delivery: p.Delivery) -> tuple[Sample, str]:
    async with open_bench_client(url, token, delivery=delivery, binary_output=binary) as client:
        if binary and not client.binary_output:
            return Sample(float("nan"), False, "-", 0, "binary framing not negotiated"), client.name
        start = time.perf_counter()
        record = await client.run(source.argv, max_output_bytes=None)
        elapsed = time.perf_counter() - start
    data = record.stdout
    exact = (
        len(data) == source.size
        and hashlib.sha256(data).hexdigest() == source.sha256
        and not record.output_lost
        and record.exit_code == 0
    )
    note = "" if exact else f"got {len(data)} bytes, lost={record.output_lost}, failure={record.failure}"
    return Sample(elapsed, exact, record.completion.value, record.read_calls, note), client.name


ARMS: Final = (
    # (label, binary framing, delivery)
    ("client text lossless", False, p.Delivery.LOSSLESS),
    ("client binary lossless", True, p.Delivery.LOSSLESS),
    ("client text bestEffort", False, p.Delivery.BEST_EFFORT),
    ("client binary bestEffort", True, p.Delivery.BEST_EFFORT),
)


async def run_section(url: str, token: str, sources: Sequence[Source], reps: int) -> tuple[Section, list[ArmSamples]]:
    section = Section(f"Throughput ({sources[0].size / 1e6:.0f} MB of stdout)")
    results: dict[tuple[str, str], ArmSamples] = {}
    clients: dict[str, str] = {}
    for _ in range(reps):
        for source in sources:
            key = ("local pipe read (subprocess, Python)", source.name)
            results.setdefault(key, ArmSamples(*key)).samples.append(await trio.to_thread.run_sync(local_pipe, source))
            for label, binary, delivery in ARMS:
                sample, client_name = await through_client(url, token, source, binary=binary, delivery=delivery)
                clients[label] = client_name
                results.setdefault((label, source.name), ArmSamples(label, source.name)).samples.append(sample)
    table = section.table("arm", "data", "MB/s (median)", "vs local", "byte-exact (sha256)", "completion", "reads", "client")
    arms = list(results.values())
    for entry in arms:
        local = results[("local pipe read (subprocess, Python)", entry.source)]
        valid = [s for s in entry.samples if s.seconds == s.seconds]  # NaN: not run
        if not valid:
            table.add(entry.arm, entry.source, "-", "-", "-", "-", "-", entry.samples[0].note)
            continue
        rate = entry.mb_per_s(sources[0].size)
        ratio = rate / local.mb_per_s(sources[0].size)
        completions = "/".join(sorted({s.completion for s in valid}))
        reads = "/".join(str(s.reads) for s in valid)
        table.add(
            entry.arm, entry.source, f"{rate:.0f}", f"{ratio:.2f}×", "yes" if entry.exact else "**no**", completions, reads,
            clients.get(entry.arm, "-"),
        )  # fmt: skip
        for sample in valid:
            if sample.note:
                section.note(f"{entry.arm} / {entry.source}: {sample.note}")
    section.note(
        f"MB = 10^6 bytes; median of {reps} runs; each client run opens its own session, and the timed window is "
        "start → complete terminal record (stdout kept whole, max_output_bytes=None). `bestEffort` is the default "
        "delivery: if the client falls behind, output events are dropped and repaired by process/read (reads > 0), "
        "and anything evicted past the server's per-process retention is reported lost (byte-exact = no)."
    )
    return section, arms
