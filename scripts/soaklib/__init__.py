"""The soak behind ``scripts/soak`` (``scripts/soak.py`` says what it does), one job a module.

    cli       the command line: options, the run, the verdict, the JSON and the exit status
    run       one soak from start to end: the service, warm-up, baseline, load, then the checks
    load      the worker threads and the request mix, each answer checked as it comes
    corpus    the adversarial corpus' programs, their expected statuses, the loopback listeners
    records   accepted executions against the records read back (API and database)
    host      the service's processes, memory, sandbox strays, cgroups and temporary files
    report    the requests summed up, the verdict and the summary for stderr

scripts/ is not a package: ``scripts/soak.py`` puts scripts/ on ``sys.path`` and imports this
one as ``soaklib`` (and ``serve_process`` beside it).
"""
