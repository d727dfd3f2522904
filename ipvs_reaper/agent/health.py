"""/healthz (the work loop is alive), /readyz (the view is complete and fresh, a config is in force) and
/metrics, on one small HTTP server."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ipvs_reaper.agent.agent import Agent


def build_app(agent: Agent) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if agent.alive():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="the work loop has not run for too long\n")

    async def readyz(_: web.Request) -> web.Response:
        reasons = agent.not_ready_because()
        if not reasons:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="".join(f"{reason}\n" for reason in reasons))

    async def metrics(_: web.Request) -> web.Response:
        agent.not_ready_because()  # refresh the readiness gauges
        return web.Response(
            body=generate_latest(agent.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_health_server(agent: Agent, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
