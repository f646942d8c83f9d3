"""tsol.schedule: graph capture, fusion, kernel selection and autotuning (in progress).

It reads ops and kernels only through ``tsol.registry`` and plugs into the eager path through
``tsol.ops.base.capture_hook`` and ``tsol.ops.base.selector``.
"""
