"""The HTTP layer: aiohttp application, routes, errors, authentication."""
