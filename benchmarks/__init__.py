"""Benchmarks of the exec server and client: ``python -m benchmarks [--quick] [--out FILE]``.

Completion latency (pushed events against the designs they replaced, sandboxed and not,
local floors), peers (asyncssh over a local sshd), throughput, concurrency, server memory
and sandbox overhead; the report is ``benchmarks/RESULTS.md`` plus a latency CDF plot.
"""
