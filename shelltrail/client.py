"""A small client of the HTTP API, for the command-line verbs and for scripts."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Final

import aiohttp

DEFAULT_URL: Final = "http://127.0.0.1:8080"


class ApiError(Exception):
    """The server answered with an error; the message is one readable line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(Exception):
    """No server answered at the URL."""


class ApiClient:
    """Use as ``async with ApiClient.from_env() as api``."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiClient:
        env = os.environ if environ is None else environ
        return cls(env.get("SHELLTRAIL_URL") or DEFAULT_URL, env.get("SHELLTRAIL_TOKEN"))

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON body (``None`` for 204)."""
        try:
            async with self._session.request(
                method, self.url + path, json=body, params=params, headers=headers
            ) as response:
                await _raise_for_problem(response)
                if response.status == 204:
                    return None
                return await response.json()
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(f"cannot reach the server at {self.url}: {exc}") from None

    async def stream(
        self, path: str, *, params: Mapping[str, str] | None = None, sse: bool = False
    ) -> AsyncIterator[bytes]:
        """The body of a streamed response, piece by piece (lines, for ``sse``)."""
        headers = {"Accept": "text/event-stream"} if sse else {}
        try:
            async with self._session.get(
                self.url + path, params=params, headers=headers
            ) as response:
                await _raise_for_problem(response)
                if sse:
                    async for line in response.content:
                        yield line
                else:
                    async for piece in response.content.iter_any():
                        yield piece
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(f"cannot reach the server at {self.url}: {exc}") from None

    async def events(self, process_id: str, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Every event of a process as SSE delivers it, until the stream closes."""
        data: list[str] = []
        async for raw in self.stream(
            f"/api/v1/processes/{process_id}/events", params={"after": str(after)}, sse=True
        ):
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                yield json.loads("\n".join(data))
                data = []


async def _raise_for_problem(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    try:
        problem = await response.json(content_type=None)
        detail = str(problem.get("detail") or problem.get("title"))
        fields = problem.get("errors") or []
        if fields:
            detail += ": " + "; ".join(f"{e['field']}: {e['message']}" for e in fields)
    except (ValueError, aiohttp.ContentTypeError, AttributeError, KeyError, TypeError):
        detail = response.reason or "error"
    raise ApiError(response.status, f"{detail} (HTTP {response.status})")
