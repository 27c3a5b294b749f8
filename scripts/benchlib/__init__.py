"""The benchmarks behind ``scripts/bench``, one module per target, and what they share.

    cli         the command line: ``scripts/bench BENCHMARK [options]``, results written and summed up
    common      shared helpers: the fixed limits, host facts, JSON output, a served service's run
    measure     client threads timing a task: the engine's task and the fresh-interpreter floor's
    wrk         driving wrk: the generated Lua script, its run and its parsed result
    sandbox     ``bench sandbox``: a warm SandboxPool against a fresh interpreter per execution
    sessions    ``bench sessions``: session calls against fresh executions; creation; idle memory
    streaming   ``bench streaming``: print-to-client latency over SSE and the WebSocket; its cost
    http        ``bench http``: ``exec-agent serve`` through each ingress, loaded by wrk
    burst       ``bench burst``: 128 connections of one key for 20 s; every answer and record checked
    compat      ``bench compat``: a verl-style loop through SandboxFusion's run_code, /v1/executions
                and /v1/batches; calls per second, p50/p99, the verdicts equal
    humaneval   ``bench humaneval``: the run, its goal and its summary (``humaneval_*``: its parts)
    suite       ``bench all``: every benchmark in turn, every goal listed

scripts/ is not a package: ``scripts/bench.py`` puts scripts/ on ``sys.path`` and imports this
one as ``benchlib`` (and ``serve_process`` beside it).
"""
