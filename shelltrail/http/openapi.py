"""The OpenAPI 3.1 document, generated from the route table and its models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shelltrail import __version__
from shelltrail.http.auth import Role
from shelltrail.http.models import Problem
from shelltrail.http.routes import Route

_REF: Final = "#/components/schemas/{model}"
_PATH_PARAM: Final = re.compile(r"{(\w+)}")
_UUID: Final = {"type": "string", "format": "uuid"}


def build_openapi(routes: Sequence[Route]) -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem}
    for route in routes:
        if route.body is not None:
            models.add(route.body)
        models.update(r.model for r in route.responses.values() if r.model is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, defs = models_json_schema(
        [(m, "serialization") for m in ordered] + [(m, "validation") for m in ordered],
        ref_template=_REF,
    )
    refs = {(m, mode): schema for (m, mode), schema in keys.items()}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shelltrail",
            "version": __version__,
            "description": "Run stored bash scripts on demand and keep a record of every run.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(route: Route, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": f"{route.method.lower()}_{route.handler.__module__.rsplit('.', 1)[-1]}"
        f"_{route.handler.__name__}",
    }
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    if route.role is not None:
        operation["security"] = [{"bearer": []}]
    operation["responses"] = _responses(route, refs)
    return operation


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _UUID}
        for name in _PATH_PARAM.findall(route.path)
    ]
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            parameter = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {k: v for k, v in prop.items() if k != "title"},
            }
            if "description" in prop:
                parameter["description"] = prop["description"]
            parameters.append(parameter)
    if route.method == "POST" and route.path.endswith("/processes"):
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "The same key returns the same process (200).",
            }
        )
    return parameters


def _responses(route: Route, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": refs[(Problem, "serialization")]}}
    responses: dict[str, Any] = {}
    for status, response in sorted(route.responses.items()):
        entry: dict[str, Any] = {"description": response.description}
        content: dict[str, Any] = {}
        if response.model is not None:
            media = "application/problem+json" if response.model is Problem else "application/json"
            content[media] = {"schema": refs[(response.model, "serialization")]}
        content.update(response.media or {})
        if content:
            entry["content"] = content
        headers = {**(route.headers if status in (200, 201) else {}), **response.headers}
        if headers and status < 300:
            entry["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in headers.items()
            }
        responses[str(status)] = entry
    if route.query is not None:
        responses.setdefault(
            "400", {"description": "The query string is not valid.", "content": problem}
        )
    if route.role is not None:
        responses.setdefault("401", {"description": "No token, or a bad one.", "content": problem})
        if route.role > Role.VIEWER:
            needed = route.role.name.lower()
            responses.setdefault(
                "403", {"description": f"Needs the {needed} role.", "content": problem}
            )
    return responses
