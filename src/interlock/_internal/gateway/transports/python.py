"""Python callables as tools: ``module:function``, looked up next to the manifest first."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import ModuleType
from typing import Any

from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.manifest.models import PythonUpstream, ToolSpec
from interlock.exceptions import ConfigError, UpstreamError


class PythonTransport:
    """Calls plain functions with the validated arguments as keyword arguments.

    A function may also accept ``context`` (a :class:`CallContext`) to see the run, the
    idempotency key, its injected credential and ``timeout_s``. Calls run in the caller's thread;
    with ``isolate: true`` they run on a worker thread and ``timeout_s`` cuts off a function that
    blocks (the call fails; the thread finishes in the background).
    """

    def __init__(self, *, base_dir: Path, max_workers: int = 32) -> None:
        self._base_dir = base_dir
        self._cache: dict[str, tuple[Callable[..., Any], bool]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._max_workers = max_workers

    def resolve(self, spec: str) -> tuple[Callable[..., Any], bool]:
        cached = self._cache.get(spec)
        if cached is not None:
            return cached
        with self._lock:
            module_name, _, attr = spec.partition(":")
            module = self._import(module_name)
            target: Any = module
            for part in attr.split("."):
                target = getattr(target, part, None)
                if target is None:
                    raise ConfigError(f"upstream.callable: {spec!r}: no attribute {attr!r} in {module_name}")
            if not callable(target):
                raise ConfigError(f"upstream.callable: {spec!r} is not callable")
            if inspect.iscoroutinefunction(target):
                raise ConfigError(f"upstream.callable: {spec!r} is async; bind a plain function")
            wants_context = "context" in inspect.signature(target).parameters
            self._cache[spec] = (target, wants_context)
            return self._cache[spec]

    def _import(self, module_name: str) -> ModuleType:
        local = self._base_dir / (module_name.replace(".", "/") + ".py")
        if local.is_file():
            # A private name per manifest directory: two workflows may both ship "tools.py".
            digest = hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:12]
            private = f"_interlock_tools_{digest}_{module_name.replace('.', '_')}"
            if private in sys.modules:
                return sys.modules[private]
            spec = importlib.util.spec_from_file_location(private, local)
            if spec is None or spec.loader is None:
                raise ConfigError(f"upstream.callable: cannot load {local}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[private] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[private]
                raise ConfigError(f"upstream.callable: importing {local.name} failed: {exc}") from exc
            return module
        try:
            return importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"upstream.callable: cannot import {module_name!r}: {exc}") from exc

    def call(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        upstream = tool.upstream
        if not isinstance(upstream, PythonUpstream):
            raise UpstreamError(f"tool {tool.name} is not bound to a Python callable")
        func, wants_context = self.resolve(upstream.callable)
        kwargs = dict(arguments)
        if wants_context:
            kwargs["context"] = ctx
        if not upstream.isolate:
            try:
                return func(**kwargs)
            except UpstreamError:
                raise
            except Exception as exc:
                raise UpstreamError(f"{tool.name} failed: {type(exc).__name__}: {exc}") from exc
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="interlock-tool")
        future = self._pool.submit(func, **kwargs)
        try:
            return future.result(timeout=ctx.timeout_s)
        except FutureTimeout as exc:
            future.cancel()
            raise UpstreamError(
                f"{tool.name} timed out after {ctx.timeout_s:g}s", code="upstream_timeout"
            ) from exc
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(f"{tool.name} failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
