"""Suite-wide test settings and the shared (session-scoped) fixtures.

XLA's CPU backend at `--xla_backend_optimization_level=0` (LLVM's codegen optimisation off; the HLO passes, so the
programs, fusion and buffer assignment, are unchanged) compiles several times faster, and compiling is most of
the suite's time. It is set here, before any test module imports jax, for the pytest process and for every
subprocess started with a copy of `os.environ`; the training subprocesses set it themselves.
"""

import os

_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _FAST_COMPILE.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
