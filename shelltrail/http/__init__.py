"""The HTTP layer: aiohttp application, routes, errors."""

from shelltrail.http.app import create_app

__all__ = ["create_app"]
