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


DEFAULT_ARM: Final = "default client (binary, lossless)"
TEXT_ARM: Final = "text framing (lossless)"
ARMS: Final = (
    # (label, binary framing, delivery): the client's defaults first, then JSON text frames.
    (DEFAULT_ARM, True, p.Delivery.LOSSLESS),
    (TEXT_ARM, False, p.Delivery.LOSSLESS),
)
# Output message sizes for the by-size sweep: the child writes blocks of this size, and the
# server forwards each pipe read as one output event (at most its read size).
MESSAGE_SIZES: Final = (256, 4096, 65536, 1024 * 1024)


def sized_source(size: int, total: int) -> Source:
    count = max(1, total // size)
    digest = hashlib.sha256(bytes(size * count)).hexdigest()
    return Source(f"{size} B writes", ("dd", "if=/dev/zero", f"bs={size}", f"count={count}", "status=none"), digest, size * count)


async def by_message_size(url: str, token: str, total: int, reps: int) -> tuple[Section, dict[str, list[tuple[int, float]]]]:
    """MB/s per output message size, binary and text framing (the default client otherwise)."""
    section = Section("Throughput by message size")
    table = section.table("write size", "framing", "bytes", "MB/s (median)", "byte-exact")
    series: dict[str, list[tuple[int, float]]] = {}
    for size in MESSAGE_SIZES:
        source = sized_source(size, total if size >= 4096 else total // 8)
        for label, binary, delivery in ARMS:
            samples = [(await through_client(url, token, source, binary=binary, delivery=delivery))[0] for _ in range(reps)]
            rate = source.size / 1e6 / statistics.median(s.seconds for s in samples)
            exact = all(s.exact for s in samples)
            series.setdefault(label, []).append((size, rate))
            table.add(f"{size:,}", label, f"{source.size:,}", f"{rate:.0f}", "yes" if exact else "**no**")
    section.note(
        "`dd bs=SIZE` writes SIZE-byte blocks of zeros; the server sends each pipe read as one output event, so SIZE is "
        f"the message size up to the server's read size. Median of {reps} runs; the smallest size streams an eighth of the bytes."
    )
    return section, series


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
        "start → complete terminal record (stdout kept whole, max_output_bytes=None), against the default server "
        "(readOnly sandbox). The default client is `open_client`'s defaults (binary output frames, lossless delivery); "
        "the text arm is the same with `binary_output=False` (base64 in JSON text frames)."
    )
    return section, arms
