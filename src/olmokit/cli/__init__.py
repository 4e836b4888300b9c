"""The ``olmokit`` command line: ``olmokit <tool> <verb> ...``. See :mod:`olmokit.cli.main`."""
