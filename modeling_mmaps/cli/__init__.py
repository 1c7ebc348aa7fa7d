"""The MMAPS console scripts, one module each: ``train`` (``mmaps-train``), ``eval`` (``mmaps-eval``) and ``synth``
(``mmaps-synth``). Each has its argument dataclasses, ``main(argv)`` for Python callers and ``console_main()``."""
