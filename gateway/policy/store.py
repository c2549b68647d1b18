"""The policy currently in force, swapped whole when the files are reloaded."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from gateway.policy.loader import load_policy
from gateway.policy.schema import Policy

log = logging.getLogger("tollgate.policy")

SwapHook = Callable[[Policy, Policy], None]
"""Called with ``(old, new)`` after a reload has swapped in ``new``."""


class PolicyStore:
    """Holds the current :class:`Policy` and reloads it from ``directory``.

    ``current`` is a plain attribute because every request reads it. A reload builds a complete
    new ``Policy`` and only then assigns it, so a reader sees the old policy or the new one,
    never a mix, and a request keeps the one it started with. Only :meth:`reload` assigns it.
    """

    __slots__ = ("_env", "_reloading", "current", "directory", "on_swap")

    def __init__(
        self,
        directory: Path,
        policy: Policy,
        *,
        env: Mapping[str, str] | None = None,
        on_swap: Iterable[SwapHook] = (),
    ) -> None:
        self.directory = directory
        self.current = policy
        # Hooks that must follow the policy (e.g. rebuilding upstream clients); append to add one.
        self.on_swap: list[SwapHook] = list(on_swap)
        self._env = env
        # Two overlapping reloads (a signal and an admin call) must not finish out of order and
        # leave the older files in force.
        self._reloading = threading.Lock()

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        env: Mapping[str, str] | None = None,
        on_swap: Iterable[SwapHook] = (),
    ) -> PolicyStore:
        """Load ``directory`` and hold the result; raises :class:`PolicyError` if it is invalid."""
        return cls(directory, load_policy(directory, env), env=env, on_swap=on_swap)

    def reload(self) -> Policy:
        """Load the directory again and swap the new policy in.

        On a :class:`PolicyError` nothing changes and the error propagates. After a swap every
        hook runs even if an earlier one fails; the first failure is then re-raised (the new
        policy stays in force: it is valid, and the hooks that did run already follow it).
        """
        with self._reloading:
            new = load_policy(self.directory, self._env)
            old, self.current = self.current, new
            failure: Exception | None = None
            for hook in list(self.on_swap):
                try:
                    hook(old, new)
                except Exception as exc:  # one broken hook must not starve the others
                    log.exception("policy swap hook %r failed", hook)
                    failure = failure or exc
            if failure is not None:
                raise failure
            return new
