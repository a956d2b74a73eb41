"""Observability built on the runtime's observer seam (``runtime/observer.py``).

``runtime/`` never imports this package: the engine passes plain values to its
:class:`~overture.runtime.observer.Observer`, and the observers here turn them into
Prometheus metrics (``metrics``); ``logs`` formats log lines as JSON (``--log-format json``).
"""
