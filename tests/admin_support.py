"""Talking to the admin listener in tests: plain GETs, and /metrics parsed by prometheus-client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from tests.support import LOOPBACK, WAIT


@dataclass(frozen=True)
class AdminAnswer:
    status: int
    content_type: str
    text: str


async def admin_get(port: int, path: str) -> AdminAnswer:
    async with (
        asyncio.timeout(WAIT),
        ClientSession() as session,
        session.get(f"http://{LOOPBACK}:{port}{path}") as response,
    ):
        text = await response.text()
        return AdminAnswer(response.status, response.headers["Content-Type"], text)


class Scrape:
    """One /metrics answer, parsed: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self._samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; a sample that is not exported at all fails the test."""
        key = (name, frozenset(labels.items()))
        assert key in self._samples, f"{name}{labels} not in /metrics"
        return self._samples[key]

    def labels(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample_name, labels in self._samples if sample_name == name]


async def scrape(port: int) -> Scrape:
    answer = await admin_get(port, "/metrics")
    assert answer.status == 200, answer
    return Scrape(answer.text)
